"""Evidence bundles: every format in one zip with a signed manifest, and their verification.

A bundle holds `evidence.json` (the record), `readings.csv`, `epcis.jsonld`, `report.pdf`,
`public-key.pem` (a copy, for convenience only: trust comes from the key you already hold),
`calibration.csv` (each logger's certificates in force over its readings, when any logger has
one or an override) and `disposition.csv` (a lot's signed disposition decisions, once QA made
one), `manifest.json` (the SHA-256 and size of each file, the subject, the generation time, the platform
version, the signing key's id) and `manifest.sig` (hex Ed25519 signature of `manifest.json`).
The zip's archive comment is a seal over the whole file (`evidence.signing`), so a change to any
byte, even one no extracted file would show, is caught.

Members are written one at a time and hashed as they are written: a lot of a million readings
never holds more than one rendered format in memory.
"""

from __future__ import annotations

import hashlib
import mmap
import queue
import re
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from evidence.epcis import epcis_bytes
from evidence.model import Evidence
from evidence.report import pdf_bytes
from evidence.signing import (
    BLANK_SEAL,
    SEAL_LENGTH,
    SEAL_TAG,
    SigningKey,
    check_seal,
    public_pem,
    seal,
    verify_signature,
)
from evidence.tabular import calibration_csv, csv_chunks, disposition_csv, iso_ms, json_chunks

BUNDLE_FORMAT = "coldchain-bundle/1"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
_COMPRESSION = zipfile.ZIP_DEFLATED
_LEVEL = 1  # readings text compresses about 8:1 even at the fastest level


def record_sha256(ev: Evidence) -> str:
    """The SHA-256 of the record (the JSON document), without keeping it."""
    h = hashlib.sha256()
    for chunk in json_chunks(ev):
        h.update(chunk)
    return h.hexdigest()


def _deflate_block(chunk: bytes) -> bytes:
    """A chunk as raw deflate blocks ending on a byte boundary, not final: such pieces, each
    compressed on its own, concatenate (with one final empty block) into one valid stream."""
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)


class _Precompressed:
    """Stands in for zipfile's compressor: hands back, in order, the pieces compressed in
    parallel, so zipfile still computes the CRC and sizes and writes every header itself."""

    def __init__(self) -> None:
        self.pieces: queue.Queue[Future[bytes]] = queue.Queue()

    def compress(self, data: bytes) -> bytes:
        return self.pieces.get().result()

    def flush(self) -> bytes:
        return zlib.compressobj(_LEVEL, zlib.DEFLATED, -15).flush()  # the final empty block


def _write_member(zf: zipfile.ZipFile, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
    """Write one member while its text is still being rendered: the caller's thread renders,
    two threads deflate the chunks, one hashes and writes (zlib and hashlib release the GIL)."""
    h = hashlib.sha256()
    size = 0
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = _COMPRESSION
    info.external_attr = 0o644 << 16
    # A ZipInfo given to ZipFile.open() does not inherit the archive's level (zlib's default 6
    # is four times slower); the attribute is `_compresslevel` up to 3.12, `compress_level` after.
    for attr in ("compress_level", "_compresslevel"):
        try:
            setattr(info, attr, _LEVEL)
            break
        except AttributeError:
            continue
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
    failed: list[BaseException] = []
    parallel = _Precompressed()

    def consume() -> None:
        try:
            with zf.open(info, "w", force_zip64=True) as member:
                # `_compressor` is private to CPython's zipfile (3.11-3.13); without it zipfile
                # compresses the chunks itself, in this thread, and the pieces go unused.
                if hasattr(member, "_compressor"):
                    member._compressor = parallel
                while (chunk := pending.get()) is not None:
                    h.update(chunk)
                    member.write(chunk)
        except BaseException as exc:  # handed to the caller's thread below
            failed.append(exc)
            while pending.get() is not None:  # let the producer finish
                pass

    worker = threading.Thread(target=consume, name=f"bundle-{name}")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"deflate-{name}") as pool:
        worker.start()
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                parallel.pieces.put(pool.submit(_deflate_block, chunk))
                pending.put(chunk)
        finally:
            pending.put(None)
            worker.join()
    if failed:
        raise failed[0]
    return {"sha256": h.hexdigest(), "bytes": size}


def write_bundle(ev: Evidence, out: IO[bytes], *, key: SigningKey, verify_url: str) -> dict[str, Any]:
    """Write the bundle to a seekable binary file and seal it; returns the manifest."""
    files: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(out, "w", compression=_COMPRESSION, compresslevel=_LEVEL) as zf:
        stem = ev.file_stem
        files["evidence.json"] = _write_member(zf, "evidence.json", json_chunks(ev))
        record = files["evidence.json"]["sha256"]
        files["readings.csv"] = _write_member(zf, "readings.csv", csv_chunks(ev))
        extras = (("calibration.csv", calibration_csv(ev)), ("disposition.csv", disposition_csv(ev)))
        for name, extra in extras:
            if extra is not None:
                files[name] = _write_member(zf, name, [extra])
        files["epcis.jsonld"] = _write_member(zf, "epcis.jsonld", [epcis_bytes(ev)])
        pdf = pdf_bytes(ev, record_sha256=record, verify_url=verify_url, key=key)
        files["report.pdf"] = _write_member(zf, "report.pdf", [pdf])
        files["public-key.pem"] = _write_member(zf, "public-key.pem", [public_pem(key.public).encode()])
        manifest = {
            "format": BUNDLE_FORMAT,
            "name": stem,
            "kind": ev.kind,
            "subject": ev.subject,
            "generated_at": iso_ms(int(ev.generated_at.timestamp() * 1000)),
            "platform_version": ev.platform_version,
            "key_id": key.key_id,
            "record_sha256": record,
            "files": files,
        }
        body = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        _write_member(zf, MANIFEST, [body])
        _write_member(zf, SIGNATURE, [key.sign(body).hex().encode("ascii") + b"\n"])
        zf.comment = BLANK_SEAL
    _seal_file(out, key)
    return manifest


def _seal_file(out: IO[bytes], key: SigningKey) -> None:
    """Seal the archive comment (the file's last bytes) over the whole file."""
    out.flush()
    end = out.seek(0, 2)
    out.seek(0)
    content = bytearray(out.read())
    seal(content, key, at=end - SEAL_LENGTH)
    out.seek(end - SEAL_LENGTH)
    out.write(bytes(content[end - SEAL_LENGTH:]))
    out.flush()


# --- verification ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    authentic: bool
    reason: str
    kind: str | None = None  # "bundle" or "pdf"
    subject: dict[str, Any] | None = None
    record_sha256: str | None = None
    key_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "authentic": self.authentic,
            "reason": self.reason,
            "file": self.kind,
            "subject": self.subject,
            "record_sha256": self.record_sha256,
            "key_id": self.key_id,
        }


def verify_path(path: Path, public: Ed25519PublicKey, *, deep: bool = False) -> Verdict:
    """Verify a bundle or a PDF on disk (memory-mapped, so a large bundle is not read twice).

    The seal covers every byte of the file, so a valid seal plus the signed manifest naming
    exactly the files present is proof enough; `deep` also re-hashes every file against the
    manifest (what one does with files extracted from a bundle)."""
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            return Verdict(False, "the file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return verify_bytes(view, public, source=path, deep=deep)


def verify_bytes(
    content: Any, public: Ed25519PublicKey, *, source: Path | None = None, deep: bool = False
) -> Verdict:
    head = bytes(content[:5])
    if head.startswith(b"%PDF"):
        return _verify_pdf(content, public)
    if head.startswith(b"PK"):
        return _verify_bundle(content, public, source, deep)
    return Verdict(False, "neither an evidence bundle (zip) nor an evidence PDF")


_PDF_SUBJECT = re.compile(rb"/Subject \(record sha256:([0-9a-f]{64})\)")
_PDF_TITLE = re.compile(rb"/Title \(Temperature evidence: ((?:[^()\\]|\\.){1,300})\)")
_PDF_ESCAPE = re.compile(rb"\\(.)")


def _verify_pdf(content: Any, public: Ed25519PublicKey) -> Verdict:
    reason = check_seal(content, public)
    record = _PDF_SUBJECT.search(content)
    title = _PDF_TITLE.search(content)
    subject = {"title": _PDF_ESCAPE.sub(rb"\1", title.group(1)).decode("latin-1")} if title else None
    digest = record.group(1).decode() if record else None
    if reason is not None:
        return Verdict(False, reason, "pdf", subject, digest)
    return Verdict(True, "the PDF's seal matches the platform key", "pdf", subject, digest)


def _verify_bundle(content: Any, public: Ed25519PublicKey, source: Path | None, deep: bool) -> Verdict:
    size = len(content)
    reason = check_seal(content, public, at=size - SEAL_LENGTH)
    if reason is not None:
        return Verdict(False, f"archive seal: {reason}", "bundle")
    try:
        target: Any = source if source is not None else _Reader(content)
        with zipfile.ZipFile(target) as zf:
            if zf.comment != bytes(content[size - SEAL_LENGTH:]) or not zf.comment.startswith(SEAL_TAG):
                return Verdict(False, "the archive comment is not the seal", "bundle")
            names = set(zf.namelist())
            if MANIFEST not in names or SIGNATURE not in names:
                return Verdict(False, "manifest.json or manifest.sig is missing", "bundle")
            body = zf.read(MANIFEST)
            try:
                signature = bytes.fromhex(zf.read(SIGNATURE).decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return Verdict(False, "manifest.sig is not a hex signature", "bundle")
            if not verify_signature(public, signature, body):
                return Verdict(False, "manifest.sig does not match manifest.json", "bundle")
            manifest = orjson.loads(body)
            subject = manifest.get("subject")
            record, kid = manifest.get("record_sha256"), manifest.get("key_id")
            files = manifest.get("files", {})
            if names != set(files) | {MANIFEST, SIGNATURE}:
                extra = sorted(names ^ (set(files) | {MANIFEST, SIGNATURE}))
                return Verdict(False, f"files differ from the manifest: {extra}", "bundle",
                               subject, record, kid)
            for name, expected in files.items() if deep else ():
                h = hashlib.sha256()
                with zf.open(name) as member:
                    for chunk in iter(lambda m=member: m.read(1 << 20), b""):  # type: ignore[misc]
                        h.update(chunk)
                if h.hexdigest() != expected.get("sha256"):
                    return Verdict(False, f"{name} does not match its hash in the manifest", "bundle",
                                   subject, record, kid)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, KeyError) as exc:
        return Verdict(False, f"the bundle cannot be read: {exc}", "bundle")
    checked = "seal, manifest signature and every file hash match" if deep else (
        "the seal over every byte and the manifest signature match")
    return Verdict(True, checked, "bundle", subject, record, kid)


class _Reader:
    """A read-only, seekable file over bytes or an mmap, for zipfile."""

    def __init__(self, content: Any) -> None:
        self._view = memoryview(content)
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(self._pos + n, len(self._view))
        out = bytes(self._view[self._pos:end])
        self._pos = end
        return out


def iter_file(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(chunk):
            yield data


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for chunk in iter_file(path):
        h.update(chunk)
    return h.hexdigest()
