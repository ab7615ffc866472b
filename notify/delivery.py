"""The delivery vocabulary every notification channel shares: states, receipts and errors.

ColdchainError
└── NotificationError
    ├── DeliveryError        a send failed; `retryable` says whether the outbox tries again
    ├── SignatureError       an inbound request (Twilio, webhook) failed its signature check
    │                        (also an AuthError, so the API answers 401/403)
    └── AckLinkError         an acknowledge link that cannot be used (also an AuthError)
        ├── AckLinkExpired
        └── AckLinkInvalid
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from coldchain.errors import AuthError, ColdchainError, ValidationError
from coldchain.notification import Channel

E164_RE: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")


def validate_e164(number: str) -> str:
    """Phone numbers are stored and sent in E.164 (`+` and up to 15 digits)."""
    if not isinstance(number, str) or not E164_RE.match(number):
        raise ValidationError(f"phone number {number!r} is not E.164", field="phone")
    return number


class DeliveryState(StrEnum):
    """Where a notification stands once handed to a provider.

    `queued` the provider accepted it; `sent` it left the provider (SMTP accepted, carrier took
    the SMS); `delivered` the handset/receiver confirmed; `undelivered` and `failed` are final
    failures. Status callbacks can arrive out of order, so use `advance` to merge them.
    """

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """No later callback can change a final state."""
        return self in _FINAL

    def advance(self, reported: DeliveryState) -> DeliveryState:
        """The state after a provider reports `reported`: never backwards, final states stick."""
        if self.final:
            return self
        if _RANK[reported] >= _RANK[self]:
            return reported
        return self


_FINAL = frozenset({DeliveryState.DELIVERED, DeliveryState.UNDELIVERED, DeliveryState.FAILED})
_RANK = {
    DeliveryState.QUEUED: 0,
    DeliveryState.SENT: 1,
    DeliveryState.DELIVERED: 2,
    DeliveryState.UNDELIVERED: 2,
    DeliveryState.FAILED: 2,
}


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """What a provider said when it took a notification.

    `provider_id` is the provider's handle (Twilio message/call SID, SMTP Message-ID, webhook
    response id when given) so that later status callbacks can be matched.
    """

    channel: Channel
    idempotency_key: str
    state: DeliveryState
    provider_id: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            raise ValidationError("a receipt needs the notification's idempotency key")


class NotificationError(ColdchainError):
    """Root of the notification errors."""


class DeliveryError(NotificationError):
    """A send that failed.

    `retryable` is True for failures that may pass later (HTTP 5xx, 408, 429, SMTP 4xx, network
    errors, timeouts) and False for permanent ones (bad number, refused recipient, bad
    credentials). `ambiguous` is True when the request may have reached the provider before the
    failure (a read timeout, a dropped connection after sending): the outbox must reconcile before
    it retries, or it risks a second message. `retry_after_s` carries a provider's Retry-After.
    """

    def __init__(
        self,
        message: str,
        *,
        channel: Channel,
        retryable: bool,
        ambiguous: bool = False,
        status: int | None = None,
        provider_code: int | str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.channel = channel
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.status = status
        self.provider_code = provider_code
        self.retry_after_s = retry_after_s


class SignatureError(NotificationError, AuthError):
    """An inbound request whose signature is missing, wrong or too old; refuse it."""


class AckLinkError(NotificationError, AuthError):
    """An acknowledge link that cannot be used."""


class AckLinkExpired(AckLinkError):
    """A genuine acknowledge link past its expiry."""


class AckLinkInvalid(AckLinkError):
    """A malformed or tampered acknowledge link."""
