"""People's access tokens: short-lived HS256 JWTs (PyJWT) signed with a key derived from SECRET_KEY.

A token names the user and the organization only; roles are read from the database on every
request, so a role change or a disabled account takes effect at once. `iat` lets the service refuse
every token issued before the user's sessions were revoked (password change, disable, logout).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt

from coldchain.errors import AuthError

ALGORITHM = "HS256"
ISSUER = "coldchain"
AUDIENCE = "coldchain-api"


def derive_key(secret: str, purpose: str) -> bytes:
    """A key of its own per purpose, so an ack-link key can never verify an access token."""
    return hmac.new(secret.encode(), f"coldchain/{purpose}/v1".encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    org_id: int
    issued_at: float
    expires_at: int
    token_id: str


def issue(
    key: bytes, *, user_id: int, org_id: int, ttl_s: int, now: float | None = None
) -> tuple[str, AccessClaims]:
    at = time.time() if now is None else now
    claims = AccessClaims(
        user_id=user_id,
        org_id=org_id,
        issued_at=at,
        expires_at=int(at) + ttl_s,
        token_id=secrets.token_hex(8),
    )
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "org": org_id,
            "iat": int(at),
            "iat_ms": int(at * 1000),
            "exp": claims.expires_at,
            "jti": claims.token_id,
            "typ": "access",
        },
        key,
        algorithm=ALGORITHM,
    )
    return token, claims


def verify(key: bytes, token: str, *, now: float | None = None) -> AccessClaims:
    """The claims of a valid, unexpired token; AuthError saying why otherwise."""
    options = {"require": ["exp", "iat", "sub", "aud", "iss"]}
    try:
        body = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options=options,  # type: ignore[arg-type]
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the access token has expired; use the refresh token") from None
    except jwt.PyJWTError:
        raise AuthError("invalid access token") from None
    if body.get("typ") != "access":
        raise AuthError("invalid access token")
    if now is not None and now >= int(body["exp"]):
        raise AuthError("the access token has expired; use the refresh token")
    return AccessClaims(
        user_id=int(body["sub"]),
        org_id=int(body["org"]),
        issued_at=int(body.get("iat_ms", int(body["iat"]) * 1000)) / 1000,
        expires_at=int(body["exp"]),
        token_id=str(body.get("jti", "")),
    )


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2
