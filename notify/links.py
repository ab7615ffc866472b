"""Signed, expiring acknowledge links for e-mail: issue a token, verify it, redact it for logs.

A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, "coldchain-ack-v1." payload))`
where the payload is compact JSON `{"a": alert_id, "c": contact_id, "e": expires, "n": nonce}`.
Verification checks the signature before it reads the payload, then the expiry. Single use is
the database's job: the caller stores `nonce` when the link is used and refuses a nonce seen
before. Mail scanners fetch links on their own, so the page a link opens must ask for a click
(a POST) before it acknowledges.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

from coldchain.errors import ConfigurationError, ValidationError
from notify.delivery import AckLinkExpired, AckLinkInvalid

__all__ = [
    "AckLinkClaims",
    "RecallAckClaims",
    "ack_url",
    "issue_ack_token",
    "issue_recall_ack_token",
    "redact_ack_url",
    "verify_ack_token",
    "verify_recall_ack_token",
]

_CONTEXT: Final = b"coldchain-ack-v1."
MIN_SECRET_BYTES: Final = 32
MAX_TOKEN_CHARS: Final = 1024
DEFAULT_TTL_S: Final = 24 * 3600


@dataclass(frozen=True, slots=True)
class AckLinkClaims:
    """What a verified acknowledge link says: who may acknowledge which alert, until when."""

    alert_id: int
    contact_id: str
    expires: int
    nonce: str

    def __post_init__(self) -> None:
        if isinstance(self.alert_id, bool) or not isinstance(self.alert_id, int):
            raise ValidationError("alert_id must be an integer", field="alert_id")
        if not isinstance(self.contact_id, str) or not self.contact_id:
            raise ValidationError("contact_id must be a non-empty string", field="contact_id")
        if isinstance(self.expires, bool) or not isinstance(self.expires, int):
            raise ValidationError("expires must be epoch seconds", field="expires")
        if not isinstance(self.nonce, str) or len(self.nonce) < 16:
            raise ValidationError("nonce must be at least 16 characters", field="nonce")


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"the link signing secret needs {MIN_SECRET_BYTES}+ bytes")
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload_b64: str, context: bytes = _CONTEXT) -> bytes:
    return hmac.new(key, context + payload_b64.encode("ascii"), hashlib.sha256).digest()


def _signed(secret: bytes | str, fields: dict[str, object], context: bytes) -> str:
    """`payload.mac`: the fields as compact sorted JSON, and their HMAC under `context`."""
    payload_b64 = _b64(json.dumps(fields, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload_b64}.{_b64(_mac(_key(secret), payload_b64, context))}"


def _checked_payload(secret: bytes | str, token: str, context: bytes) -> str:
    """The payload part of a token whose shape and HMAC under `context` hold; AckLinkInvalid
    otherwise (before anything of the payload is read)."""
    key = _key(secret)
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise AckLinkInvalid("acknowledge link is malformed")
    payload_b64, dot, mac_b64 = token.partition(".")
    if not dot or not payload_b64 or not mac_b64 or "." in mac_b64:
        raise AckLinkInvalid("acknowledge link is malformed")
    try:
        given = _unb64(mac_b64)
    except (binascii.Error, ValueError):
        raise AckLinkInvalid("acknowledge link is malformed") from None
    if not hmac.compare_digest(_mac(key, payload_b64, context), given):
        raise AckLinkInvalid("acknowledge link signature does not match")
    return payload_b64


def issue_ack_token(
    secret: bytes | str,
    *,
    alert_id: int,
    contact_id: str,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
    nonce: str | None = None,
) -> str:
    """A signed token letting `contact_id` acknowledge `alert_id` for `ttl_s` seconds."""
    if ttl_s <= 0:
        raise ValidationError("ttl_s must be positive", field="ttl_s")
    issued = time.time() if now is None else now
    claims = AckLinkClaims(
        alert_id=alert_id,
        contact_id=contact_id,
        expires=int(issued) + int(ttl_s),
        nonce=nonce or secrets.token_urlsafe(16),
    )
    fields = {"a": claims.alert_id, "c": claims.contact_id, "e": claims.expires, "n": claims.nonce}
    return _signed(secret, fields, _CONTEXT)


def verify_ack_token(secret: bytes | str, token: str, *, now: float | None = None) -> AckLinkClaims:
    """The claims of a genuine, unexpired token; raises AckLinkInvalid or AckLinkExpired."""
    payload_b64 = _checked_payload(secret, token, _CONTEXT)
    try:
        fields = json.loads(_unb64(payload_b64))
        claims = AckLinkClaims(
            alert_id=fields["a"], contact_id=fields["c"], expires=fields["e"], nonce=fields["n"]
        )
    except (binascii.Error, ValueError, KeyError, TypeError, ValidationError):
        # Only reachable with the secret: a token we signed but cannot read is still refused.
        raise AckLinkInvalid("acknowledge link payload is unreadable") from None
    current = time.time() if now is None else now
    if current >= claims.expires:
        raise AckLinkExpired(f"acknowledge link for alert {claims.alert_id} has expired")
    return claims


def ack_url(base_url: str, token: str) -> str:
    """The link to put in an e-mail: `base_url` (the API's acknowledge page) plus the token."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"acknowledge base URL {base_url!r} is not an http(s) URL")
    query = (parts.query + "&" if parts.query else "") + "token=" + quote(token, safe="")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def redact_ack_url(url: str) -> str:
    """The link with its token cut short, fit for a log line."""
    head, sep, token = url.partition("token=")
    if not sep:
        return url
    token = token.split("&", 1)[0]
    return f"{head}token={token[:8]}..."


# -- recall acknowledge links -----------------------------------------------------------------
# The same form under its own MAC context, so an alert link can never pass as a recall link.

_RECALL_CONTEXT: Final = b"coldchain-recall-ack-v1."
RECALL_TTL_S: Final = 14 * 24 * 3600  # a consignee may take days to count what it holds


@dataclass(frozen=True, slots=True)
class RecallAckClaims:
    """Who may acknowledge a recall for one consignee, until when."""

    consignee_id: int
    contact_id: str
    expires: int
    nonce: str


def issue_recall_ack_token(
    secret: bytes | str,
    *,
    consignee_id: int,
    contact_id: str,
    ttl_s: int = RECALL_TTL_S,
    now: float | None = None,
) -> str:
    """A signed token letting `contact_id` acknowledge the recall for consignee `consignee_id`."""
    if ttl_s <= 0:
        raise ValidationError("ttl_s must be positive", field="ttl_s")
    issued = time.time() if now is None else now
    expires = int(issued) + int(ttl_s)
    fields = {"r": consignee_id, "c": contact_id, "e": expires, "n": secrets.token_urlsafe(16)}
    return _signed(secret, fields, _RECALL_CONTEXT)


def verify_recall_ack_token(secret: bytes | str, token: str, *, now: float | None = None) -> RecallAckClaims:
    """The claims of a genuine, unexpired recall token; raises AckLinkInvalid or AckLinkExpired."""
    payload_b64 = _checked_payload(secret, token, _RECALL_CONTEXT)
    try:
        fields = json.loads(_unb64(payload_b64))
        claims = RecallAckClaims(
            consignee_id=int(fields["r"]),
            contact_id=str(fields["c"]),
            expires=int(fields["e"]),
            nonce=str(fields["n"]),
        )
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise AckLinkInvalid("acknowledge link payload is unreadable") from None
    current = time.time() if now is None else now
    if current >= claims.expires:
        raise AckLinkExpired("recall acknowledge link has expired")
    return claims
