"""A backup archive: one tar file (mode 0600) holding the database dump, the files of the data
folder a platform cannot do without (its keys and secrets, the evidence bundles), and a manifest
with the SHA-256 of every member, so a restore refuses an archive that changed.

The archive holds the platform's signing key and secrets: keep it as safe as the data folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMAT = "coldchain-backup/1"
MANIFEST = "manifest.json"
DATABASE_MEMBER = "database.dump"
# What of a data folder a backup takes: everything but the servers' own state and run files.
_SKIPPED = (
    "postgres", "mosquitto", "mosquitto.url", "postgres.port", "postgres.log", "mosquitto.log", "logs",
)


class BackupError(Exception):
    """An archive that cannot be written, read or trusted."""


def data_files(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of each file of the data folder to keep, in a stable order."""
    if not data_dir.is_dir():
        return
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir)
        if relative.parts[0] in _SKIPPED or not path.is_file() or path.is_symlink():
            continue
        yield "data/" + relative.as_posix(), path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(archive: Path, members: list[tuple[str, Path]], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the archive (to a temporary name, then renamed); returns the manifest written."""
    files = {name: {"sha256": _sha256(path), "size": path.stat().st_size} for name, path in members}
    doc = {"format": FORMAT, **manifest, "files": files}
    partial = archive.with_name(archive.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        body = json.dumps(doc, indent=2, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode = len(body), 0o600
        tar.addfile(info, io.BytesIO(body))
        for name, path in members:
            tar.add(path, arcname=name, recursive=False, filter=_private)
        raw.flush()
        os.fsync(raw.fileno())
    partial.replace(archive)
    return doc


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
    return info


def read(archive: Path, into: Path) -> dict[str, Any]:
    """Unpack an archive into `into` and check every member against the manifest."""
    try:
        with tarfile.open(archive, mode="r") as tar:
            manifest_member = tar.extractfile(MANIFEST)
            if manifest_member is None:
                raise BackupError(f"{archive}: no {MANIFEST}")
            doc = json.loads(manifest_member.read())
            if doc.get("format") != FORMAT:
                raise BackupError(f"{archive}: not a {FORMAT} archive")
            names = set(doc.get("files", {}))
            for member in tar.getmembers():
                if member.name == MANIFEST:
                    continue
                if member.name not in names or not member.isfile():
                    raise BackupError(f"{archive}: {member.name!r} is not in the manifest")
            tar.extractall(into, members=[m for m in tar.getmembers() if m.name in names], filter="data")
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise BackupError(f"{archive}: cannot be read ({exc})") from None
    for name, expected in doc["files"].items():
        path = into / name
        if not path.is_file():
            raise BackupError(f"{archive}: {name} is missing")
        if _sha256(path) != expected["sha256"]:
            raise BackupError(f"{archive}: {name} does not match its SHA-256 in the manifest (changed)")
    return dict(doc)
