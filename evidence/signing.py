"""The platform's Ed25519 evidence key: made on first start in the data folder (mode 0600), and
the seals that make one signature cover every byte of a bundle or a PDF.

A seal is a fixed-length field of hex digits inside the file (the zip archive comment of a
bundle, a metadata entry of a PDF). The signature covers the SHA-256 of the whole file with that
field set to zeros, so changing any byte anywhere, the seal included, breaks it; and writing the
signature in place does not move a single other byte.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldchain.errors import ConfigurationError

KEY_FILE = "evidence-signing-key.pem"
SEAL_TAG = b"coldchain-seal:"
SEAL_HEX = 128  # an Ed25519 signature is 64 bytes
SEAL_LENGTH = len(SEAL_TAG) + SEAL_HEX
BLANK_SEAL = SEAL_TAG + b"0" * SEAL_HEX
_CONTEXT = b"coldchain-evidence-seal/1\n"


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its raw bytes' SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigurationError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError("the public key is not an Ed25519 key")
    return key


@dataclass(frozen=True, slots=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def signing_key(data_dir: Path) -> SigningKey:
    """The platform's key, made (mode 0600) on first use; refuses a key file others can read."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{path} must be readable by its owner only (chmod 600)")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} does not hold an Ed25519 private key")
    return SigningKey(key)


def public_key_file(data_dir: Path) -> Ed25519PublicKey:
    return signing_key(data_dir).public


# --- seals ------------------------------------------------------------------------------------------


def _digest(content: bytes | bytearray, at: int) -> bytes:
    h = hashlib.sha256(_CONTEXT)
    view = memoryview(content)
    h.update(view[: at + len(SEAL_TAG)])
    h.update(b"0" * SEAL_HEX)
    h.update(view[at + SEAL_LENGTH :])
    return h.digest()


def seal(content: bytearray, key: SigningKey, *, at: int | None = None) -> None:
    """Sign a file holding a blank seal at `at` (default: its only blank seal), in place."""
    if at is None:
        at = content.find(BLANK_SEAL)
        if at < 0 or content.find(SEAL_TAG, at + 1) >= 0:
            raise ValueError("the file must hold exactly one blank seal")
    elif content[at : at + SEAL_LENGTH] != BLANK_SEAL:
        raise ValueError("no blank seal where one was expected")
    signature = key.sign(_digest(content, at))
    content[at + len(SEAL_TAG) : at + SEAL_LENGTH] = signature.hex().encode("ascii")


def check_seal(content: bytes, public: Ed25519PublicKey, *, at: int | None = None) -> str | None:
    """None when the seal (at `at`, default: the file's only seal) is genuine, else why not."""
    if at is None:
        at = content.rfind(SEAL_TAG)
        if at < 0:
            return "the file carries no coldchain seal"
        if content.find(SEAL_TAG) != at:
            return "the file carries more than one seal"
    elif at < 0 or content[at : at + len(SEAL_TAG)] != SEAL_TAG:
        return "the file carries no coldchain seal where it belongs"
    hex_sig = content[at + len(SEAL_TAG) : at + SEAL_LENGTH]
    try:
        signature = bytes.fromhex(hex_sig.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return "the seal is not a hex signature"
    if len(signature) != 64:
        return "the seal is truncated"
    try:
        public.verify(signature, _digest(content, at))
    except InvalidSignature:
        return "the seal does not match the file: its bytes were changed after signing"
    return None


def verify_signature(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def existing_public_key(data_dir: Path) -> Ed25519PublicKey | None:
    """The platform's public key if this data folder has one (verification never makes a key)."""
    path = data_dir / KEY_FILE
    if not path.exists():
        return None
    return signing_key(data_dir).public
