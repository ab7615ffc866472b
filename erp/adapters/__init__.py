"""The adapter interface of the ERP outbox: an event with the records it is pushed to, and what a
delivery attempt can answer. Adapters: `webhook` (signed JSON), `odoo` (JSON-RPC), `erpnext` (REST).

Every adapter is idempotent per `OutboundEvent.idempotency_key`: before it creates anything it
looks for what an earlier attempt (a crash, a timeout after the ERP committed) already created,
so a redelivery never makes a second attachment or message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from coldchain.errors import ColdchainError


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file pushed with an event: the evidence PDF, or the sealed bundle (a zip)."""

    name: str
    mimetype: str
    content: bytes = field(repr=False)
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """A record in the ERP an event is pushed to: a shipment (Odoo `stock.picking`, ERPNext
    Delivery Note) by its ERP reference, or a lot (Odoo `stock.lot`, ERPNext Batch) by its number."""

    kind: Literal["shipment", "lot"]
    ref: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """One event for one connection, composed by the worker before the attempt."""

    idempotency_key: str
    kind: str
    summary: str  # one human sentence for the chatter message or comment
    document: dict[str, Any]  # the JSON payload of docs/erp.md (without the files' content)
    targets: tuple[TargetRecord, ...]


class DeliveryFailed(ColdchainError):
    """An attempt did not deliver; `retryable` says whether the outbox tries again later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Adapter(Protocol):
    def deliver(self, event: OutboundEvent) -> str | None:
        """Push the event; returns a reference of what the ERP made (for the delivery row)."""
        ...
