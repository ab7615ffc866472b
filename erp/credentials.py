"""ERP connection secrets at rest: sealed with AES-256-GCM under a key derived from SECRET_KEY.

A database dump or backup alone does not reveal an ERP password, API secret or webhook secret;
the key never touches the database. The connection's organization and id are bound in as
associated data, so a sealed secret copied onto another connection does not open. Rotating
SECRET_KEY means entering the ERP secrets again (docs/erp.md).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coldchain.errors import ConfigurationError

_VERSION = b"\x01"
_INFO = b"coldchain erp connection secrets v1"


def _key(secret_key: str) -> bytes:
    if not secret_key:
        raise ConfigurationError("SECRET_KEY is needed to seal ERP connection secrets")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret_key.encode())


def _aad(org_id: int, connection_id: str) -> bytes:
    return f"{org_id}:{connection_id}".encode()


def seal(secret_key: str, *, org_id: int, connection_id: str, secret: str) -> bytes:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(secret_key)).encrypt(nonce, secret.encode(), _aad(org_id, connection_id))
    return _VERSION + nonce + sealed


def open_sealed(secret_key: str, *, org_id: int, connection_id: str, sealed: bytes) -> str:
    """The secret; ConfigurationError when it cannot be opened (SECRET_KEY changed, or tampering)."""
    if len(sealed) < 29 or sealed[:1] != _VERSION:
        raise ConfigurationError(f"the secret of ERP connection {connection_id!r} is not readable")
    try:
        plain = AESGCM(_key(secret_key)).decrypt(sealed[1:13], sealed[13:], _aad(org_id, connection_id))
    except InvalidTag:
        raise ConfigurationError(
            f"the secret of ERP connection {connection_id!r} does not open with this SECRET_KEY;"
            " enter it again"
        ) from None
    return plain.decode()
