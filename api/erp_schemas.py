"""Request and response models of the ERP outbound routes: connections (secrets go in, never out),
deliveries with their state, and a shipment's ERP reference."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from api.schemas import LINE_PATTERN, _In, _Out
from storage.erp_outbox import ConnectionRow, DeliveryRow

CONNECTION_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,48}$"
URL_PATTERN = r"^https?://[^\x00-\x20\x7f]{1,2000}$"
SECRET_PATTERN = r"^[^\x00-\x1f\x7f]{8,500}$"
ERP_REF_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,140}$"  # as the column's CHECK: no control characters
RECORD_PATTERN = r"^(?:shipment:[A-Za-z0-9_.:/-]{1,64}|alert:[0-9]{1,15}|recall:[0-9]{1,15})$"

EventKind = Literal[
    "alert.opened",
    "alert.acknowledged",
    "alert.closed",
    "excursion.closed",
    "shipment.completed",
    "recall.opened",
]
ALL_EVENTS: list[EventKind] = [
    "alert.opened",
    "alert.acknowledged",
    "alert.closed",
    "excursion.closed",
    "shipment.completed",
    "recall.opened",
]
DeliveryState = Literal["pending", "sending", "delivered", "failed"]
OptionText = Annotated[str, Field(min_length=1, max_length=200, pattern=LINE_PATTERN)]


def _distinct(values: list[EventKind]) -> list[EventKind]:
    if len(set(values)) != len(values):
        raise ValueError("events must be distinct")
    return values


class ErpConnectionBody(_In):
    """A connection to the organization's ERP. Odoo needs `database` and `login` (the secret is the
    user's API key); ERPNext needs `api_key` (the secret is the API secret); a webhook's secret
    signs every delivery. The secret may be left out when replacing a connection of the same kind."""

    kind: Literal["webhook", "odoo", "erpnext"]
    url: Annotated[str, Field(pattern=URL_PATTERN, examples=["https://erp.example.com"])]
    events: Annotated[list[EventKind], Field(min_length=1, max_length=6), AfterValidator(_distinct)] = Field(
        default_factory=lambda: list(ALL_EVENTS)
    )
    enabled: bool = True
    secret: Annotated[str, Field(pattern=SECRET_PATTERN)] | None = Field(
        default=None, description="write-only: stored encrypted, never returned"
    )
    database: OptionText | None = None
    login: OptionText | None = None
    api_key: OptionText | None = None


class ErpConnectionOut(_Out):
    id: str
    kind: str
    url: str
    events: list[str]
    enabled: bool
    database: str | None = None
    login: str | None = None
    api_key: str | None = None
    created_at: datetime
    updated_at: datetime


def connection_out(row: ConnectionRow) -> ErpConnectionOut:
    return ErpConnectionOut(
        id=row.id,
        kind=row.kind,
        url=row.url,
        events=list(row.events),
        enabled=row.enabled,
        database=row.options.get("database"),
        login=row.options.get("login"),
        api_key=row.options.get("api_key"),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class ErpDeliveryOut(_Out):
    id: int
    event_id: int
    event: str
    connection: str
    connection_kind: str
    idempotency_key: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    remote_ref: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    shipment: str | None
    alert_id: int | None
    recall_id: int | None


def delivery_out(row: DeliveryRow) -> ErpDeliveryOut:
    return ErpDeliveryOut(
        id=row.id,
        event_id=row.event_id,
        event=row.event_kind,
        connection=row.connection_id,
        connection_kind=row.connection_kind,
        idempotency_key=row.idempotency_key,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        remote_ref=row.remote_ref,
        created_at=row.created_at,
        updated_at=row.updated_at,
        delivered_at=row.delivered_at,
        shipment=row.shipment_id,
        alert_id=row.alert_id,
        recall_id=row.recall_id,
    )


class ErpRefBody(_In):
    erp_ref: Annotated[str, Field(pattern=ERP_REF_PATTERN, examples=["WH/OUT/00042"])] | None = Field(
        description="the shipment's record in the ERP (Odoo picking name, ERPNext Delivery Note); null:"
        " the shipment id"
    )


class ErpRefOut(_Out):
    shipment: str
    erp_ref: str | None
