"""Request and response models at the HTTP edge; converted to domain types right away."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.esign import SignatureIn
from coldchain.domain import Alert, Device, DeviceAssignment, Lot, Shipment, ShipmentLot


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceCreate(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", examples=["TRK-0042-L1"])
    kind: str = Field(default="logger", max_length=64, examples=["usb-logger"])
    interval_s: int = Field(default=60, ge=1, le=86_400)
    name: str | None = Field(default=None, max_length=200)

    def to_domain(self, organization: str) -> Device:
        return Device(
            id=self.id, kind=self.kind, interval_s=self.interval_s, name=self.name, organization=organization
        )


class DevicePublic(BaseModel):
    id: str
    kind: str
    interval_s: int
    name: str | None
    created_at: datetime
    last_seen_at: datetime | None
    last_seq: int | None
    clock_offset_ms: int | None
    status: dict[str, Any] | None


class LotIn(_Strict):
    gtin: str = Field(examples=["09506000134352"])
    lot: str = Field(examples=["A123"])
    expiry: date | None = None
    quantity: int | None = Field(default=None, ge=0)
    stability_budget_s: int | None = Field(default=None, ge=0)


class AssignmentIn(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str
    from_: datetime = Field(alias="from")
    to: datetime | None = None


class ShipmentCreate(_Strict):
    id: str = Field(examples=["SO-1001"])
    origin: str | None = None
    destination: str | None = None
    profile: str | None = Field(default=None, description="default: the products' default profile, else 2-8C")
    lots: list[LotIn] = []
    devices: list[AssignmentIn] = []

    def to_domain(self, organization: str, *, profile: str) -> Shipment:
        return Shipment(
            id=self.id,
            origin=self.origin,
            destination=self.destination,
            profile=profile,
            organization=organization,
            lots=tuple(
                ShipmentLot(Lot(x.gtin, x.lot, x.expiry, x.stability_budget_s), x.quantity) for x in self.lots
            ),
            devices=tuple(DeviceAssignment(d.id, d.from_, d.to) for d in self.devices),
        )


class AckBody(_Strict):
    comment: str | None = Field(default=None, max_length=2000)


class CloseBody(_Strict):
    disposition: str = Field(pattern="^(release|quarantine|reject)$")
    comment: str = Field(min_length=1, max_length=4000)
    signature: SignatureIn | None = None  # required: QA's e-signature (21 CFR Part 11)


class CreditBody(_Strict):
    """QA gives time back to a lot's stability budget, e.g. when a stability study covers an excursion."""

    seconds: float = Field(gt=0, le=10 * 365 * 86400)
    reason: str = Field(min_length=1, max_length=4000)
    alert_id: int | None = Field(default=None, ge=1)
    signature: SignatureIn | None = None  # required: QA's e-signature (21 CFR Part 11)


class AssignBody(_Strict):
    assignee: str | None = Field(default=None, max_length=200)


def alert_public(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity.value,
        "state": alert.state.value,
        "device": alert.device_id,
        "shipment": alert.shipment_id,
        "limit": alert.limit_id,
        "profile": alert.profile_id,
        "profile_version": alert.profile_version,
        "message": alert.message,
        "opened_at": alert.opened_at,
        "started_at": alert.started_at,
        "ended_at": alert.ended_at,
        "peak_c": alert.peak_c,
        "acknowledged_at": alert.acknowledged_at,
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": alert.resolved_at,
        "closed_at": alert.closed_at,
        "disposition": alert.disposition.value if alert.disposition else None,
        "assignee": alert.assignee,
        "lots": [{"gtin": g, "lot": lot} for g, lot in alert.lots],
    }


class ProductProfileBody(_Strict):
    profile: str = Field(min_length=1, max_length=64)
