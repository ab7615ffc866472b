"""The generic ERP adapter: each event POSTed as JSON to one URL, signed like the notification
webhooks (docs/erp.md has the payloads and the receiver's check).

Headers:

    X-Coldchain-Timestamp: 1795515300
    X-Coldchain-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>
    X-Coldchain-Delivery:  <idempotency key: the same on every attempt of one delivery>
    X-Coldchain-Event:     alert.opened | alert.acknowledged | alert.closed | excursion.closed |
                           shipment.completed | recall.opened

2xx is delivered; 408, 425, 429, 5xx and transport errors are retried; any other answer
(redirects included) is final. The receiver drops a delivery id it has already processed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from erp.adapters import DeliveryFailed, OutboundEvent
from erp.adapters.http import request, retryable_status

TIMESTAMP_HEADER: Final = "X-Coldchain-Timestamp"
SIGNATURE_HEADER: Final = "X-Coldchain-Signature"
DELIVERY_HEADER: Final = "X-Coldchain-Delivery"
EVENT_HEADER: Final = "X-Coldchain-Event"
PAYLOAD_FORMAT: Final = "coldchain.erp.v1"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    signed = str(int(timestamp)).encode("ascii") + b"." + body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def payload(event: OutboundEvent) -> dict[str, Any]:
    """The JSON body: the event's document and, per record, its files in base64."""
    return {
        "format": PAYLOAD_FORMAT,
        "delivery": event.idempotency_key,
        "event": event.kind,
        "summary": event.summary,
        **event.document,
        "records": [
            {
                "kind": t.kind,
                "ref": t.ref,
                "attachments": [
                    {
                        "name": a.name,
                        "mimetype": a.mimetype,
                        "size": len(a.content),
                        "sha256": a.sha256 or hashlib.sha256(a.content).hexdigest(),
                        "content_base64": base64.b64encode(a.content).decode("ascii"),
                    }
                    for a in t.attachments
                ],
            }
            for t in event.targets
        ],
    }


@dataclass(slots=True)
class WebhookAdapter:
    url: str
    secret: str = field(repr=False)
    timeout_s: float = 30.0
    allow_private: bool = False
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.secret:
            raise DeliveryFailed("the webhook connection has no secret", retryable=False)

    def deliver(self, event: OutboundEvent) -> str | None:
        body = orjson.dumps(payload(event))
        timestamp = int(self.clock())
        answer = request(
            self.url,
            body=body,
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(self.secret, body, timestamp),
                DELIVERY_HEADER: event.idempotency_key,
                EVENT_HEADER: event.kind,
            },
            timeout_s=self.timeout_s,
            allow_private=self.allow_private,
        )
        host = urlsplit(self.url).hostname
        if 200 <= answer.status < 300:
            return answer.headers.get("x-request-id")
        raise DeliveryFailed(
            f"webhook {host} answered HTTP {answer.status}", retryable=retryable_status(answer.status)
        )
