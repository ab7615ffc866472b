"""Signed webhooks: POST JSON with a timestamped HMAC-SHA256 signature, and its verification.

Headers on every delivery:

    X-Coldchain-Timestamp: 1795515300
    X-Coldchain-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>
    X-Coldchain-Delivery:  <idempotency key, the same on every retry of one notification>

A receiver recomputes the HMAC over the raw body, compares in constant time, refuses timestamps
older than its tolerance (replays) and drops deliveries whose X-Coldchain-Delivery it has seen.
The signature header may list several `v1=` values (comma separated) while a secret rotates.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from coldchain.errors import ConfigurationError
from coldchain.notification import Channel
from notify.delivery import DeliveryError, DeliveryReceipt, DeliveryState, SignatureError

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookEndpoint",
    "WebhookSender",
    "sign_webhook",
    "verify_webhook_signature",
]

logger = logging.getLogger(__name__)

TIMESTAMP_HEADER: Final = "X-Coldchain-Timestamp"
SIGNATURE_HEADER: Final = "X-Coldchain-Signature"
DELIVERY_HEADER: Final = "X-Coldchain-Delivery"
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_TOLERANCE_S: Final = 300
MAX_RESPONSE_BYTES: Final = 64 * 1024


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ConfigurationError("a webhook secret must not be empty")
    return key


def sign_webhook(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """The X-Coldchain-Signature value for `body` sent at `timestamp` (epoch seconds)."""
    signed = str(int(timestamp)).encode("ascii") + b"." + body
    return "v1=" + hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()


def verify_webhook_signature(
    secret: bytes | str,
    body: bytes,
    timestamp: str | int | None,
    signature: str | None,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a delivery's signature and age; raise SignatureError when it must be refused."""
    if timestamp is None or signature is None:
        raise SignatureError("missing webhook timestamp or signature")
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        raise SignatureError("webhook timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError("webhook timestamp outside the tolerance")
    expected = sign_webhook(secret, body, ts).encode("ascii")
    candidates = [part.strip() for part in signature.split(",")]
    # Compare with every v1 candidate so the time taken does not depend on which matched.
    matched = False
    for candidate in candidates:
        if candidate.startswith("v1="):
            matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not matched:
        raise SignatureError("webhook signature does not match")


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A receiver: its URL and the secret shared with it (never shown in repr or logs)."""

    url: str
    secret: bytes | str = field(repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"webhook URL {self.url!r} is not an http(s) URL")
        _key(self.secret)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


class WebhookSender:
    """Delivers signed JSON POSTs with http.client: a timeout, no redirects, no cookies.

    2xx is DELIVERED. 408, 425, 429 and 5xx are retryable; any other status, redirects included,
    is permanent (a redirect for a signed POST is a configuration error at the receiver).
    """

    channel: Final = Channel.WEBHOOK

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        user_agent: str = "coldchain-webhook/1",
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigurationError("the webhook timeout must be positive")
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._ssl_context = ssl_context
        self._clock = clock

    def send(
        self,
        endpoint: WebhookEndpoint,
        payload: Mapping[str, Any] | bytes,
        *,
        idempotency_key: str,
    ) -> DeliveryReceipt:
        """POST `payload` (a mapping serialised as JSON, or ready JSON bytes) to `endpoint`."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(dict(payload))
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(endpoint.secret, body, timestamp),
            DELIVERY_HEADER: idempotency_key,
        }
        parts = urlsplit(endpoint.url)
        host = parts.hostname or ""
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host,
                parts.port,
                timeout=self.timeout_s,
                context=self._ssl_context or ssl.create_default_context(),
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self.timeout_s)
        sent = False
        try:
            conn.connect()
            conn.request("POST", path, body=body, headers=headers)
            sent = True
            response = conn.getresponse()
            status = response.status
            response.read(MAX_RESPONSE_BYTES)
            retry_after = _retry_after(response.getheader("Retry-After"))
            provider_id = response.getheader("X-Request-Id")
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("webhook %s to %s failed: %s", idempotency_key, host, type(exc).__name__)
            raise DeliveryError(
                f"webhook to {host} failed: {type(exc).__name__}",
                channel=self.channel,
                retryable=True,
                ambiguous=sent,
            ) from exc
        finally:
            conn.close()
        if 200 <= status < 300:
            logger.info("webhook %s delivered to %s (%s)", idempotency_key, host, status)
            return DeliveryReceipt(
                channel=self.channel,
                idempotency_key=idempotency_key,
                state=DeliveryState.DELIVERED,
                provider_id=provider_id,
                detail=str(status),
            )
        retryable = status >= 500 or status in (408, 425, 429)
        logger.warning(
            "webhook %s to %s answered %s (retryable=%s)", idempotency_key, host, status, retryable
        )
        raise DeliveryError(
            f"webhook to {host} answered HTTP {status}",
            channel=self.channel,
            retryable=retryable,
            status=status,
            retry_after_s=retry_after,
        )
