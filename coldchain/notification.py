"""What a notification is, in the words the outbox, the worker and the API share."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Channel", "NotificationKind", "NotificationState"]


class Channel(StrEnum):
    """How a notification reaches a person or a system."""

    SMS = "sms"
    VOICE = "voice"
    EMAIL = "email"
    WEBHOOK = "webhook"


class NotificationKind(StrEnum):
    """An escalation tier's message for one alert, a digest folding several held ones, the notice
    that an alert was withdrawn (sent to everyone its escalation reached), or a recall's message to
    one consignee."""

    ESCALATION = "escalation"
    DIGEST = "digest"
    WITHDRAWAL = "withdrawal"
    RECALL = "recall"


class NotificationState(StrEnum):
    """Where an outbox row stands: pending -> sending -> queued/sent -> delivered, or a final failure.

    `held` waits to be folded into a digest (`digested`); `suppressed` was gated out when planned;
    `cancelled` was not sent because its alert stopped escalating.
    """

    PENDING = "pending"
    SENDING = "sending"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    HELD = "held"
    DIGESTED = "digested"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
