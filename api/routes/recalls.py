"""Recalls: open one by lots, by a logger's window or by an excursion, read its impact, record
each consignee's acknowledgement (the last one fixes the recall's response time)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, status
from pydantic import Field

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.schemas import (
    LOT_PATTERN,
    REASON_PATTERN,
    Count,
    DeviceId,
    Gtin,
    Moment,
    RowId,
    _In,
    _Out,
)
from coldchain.access import Permission
from erp.recalls import RecallRequest, acknowledge, open_recall
from storage import recalls as store

router = APIRouter(tags=["recalls"])

# AI (21): 1 to 20 characters of character set 82, as a lot; a lot entry may also be GS1 data.
SERIAL_PATTERN = LOT_PATTERN
LOT_ENTRY_PATTERN = r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z\]\[^\x1d]{1,256}$"

RecallIdPath = Annotated[int, Path(ge=1, le=2**53 - 1)]
ConsigneeIdPath = Annotated[int, Path(ge=1, le=2**53 - 1)]


class RecallCreate(_In):
    reason: Annotated[str, Field(min_length=1, max_length=2000, pattern=REASON_PATTERN)]
    classification: Literal["I", "II", "III"] | None = None
    gtin: Gtin | None = None
    # The bounds keep the largest valid body under the request limit (1 MiB by default).
    lots: list[Annotated[str, Field(min_length=1, max_length=256, pattern=LOT_ENTRY_PATTERN)]] = Field(
        default_factory=list,
        max_length=500,
        description="lot numbers of `gtin`, or GS1 data naming a lot (HRI, element string, Digital Link)",
    )
    serials: list[Annotated[str, Field(pattern=SERIAL_PATTERN)]] = Field(
        default_factory=list, max_length=1000, description="serials of `gtin`: recall the lots holding them"
    )
    device: DeviceId | None = Field(default=None, description="a logger: recall every lot that rode with it")
    from_: Moment | None = Field(default=None, alias="from")
    to: Moment | None = None
    alert: RowId | None = Field(
        default=None, description="an excursion alert: recall the lots of its shipment"
    )


class AcknowledgeBody(_In):
    quarantined: Count | None = None
    returned: Count | None = None


class RecallCriteria(_Out):
    gtin: str | None = None
    lots: list[str] | None = None
    serials: list[str] | None = None
    device: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    alert: int | None = None


class ImpactLine(_Out):
    gtin: str
    lot: str
    quantity: int | None


class ImpactRide(_Out):
    id: str
    from_: str | None = Field(alias="from")
    to: str | None


class ImpactExcursion(_Out):
    id: int
    kind: str
    severity: str
    state: str
    started_at: str | None
    ended_at: str | None
    peak_c: float | None
    disposition: str | None
    evidence: str


class ImpactShipment(_Out):
    id: str
    origin: str | None
    destination: str | None
    destination_gln: str | None
    carrier: str | None
    mode: str | None
    lots: list[ImpactLine]
    quantity: int
    devices: list[ImpactRide]
    excursions: list[ImpactExcursion]
    evidence: str


class ImpactLot(_Out):
    gtin: str
    lot: str
    expiry: str | None
    quantity: int | None
    stability_budget_s: float | None
    stability_budget_spent_s: float | None
    stability_budget_credited_s: float | None
    stability_budget_remaining_s: float | None
    disposition: Literal["pending", "quarantine", "release", "reject"] | None = Field(
        default=None,
        description="QA's disposition of the lot when the recall was opened (absent in recalls"
        " opened before lots had one)",
    )
    shipments: list[str]
    digital_link: str
    evidence: str


class ImpactTotals(_Out):
    shipments: int
    lots: int
    consignees: int
    quantity: int
    excursions: int
    devices: int


class RecallImpact(_Out):
    shipments: list[ImpactShipment]
    lots: list[ImpactLot]
    devices: list[str]
    totals: ImpactTotals


class ConsigneeOut(_Out):
    id: int
    shipment: str
    consignee: str | None
    consignee_gln: str | None
    quantity: int | None
    notified_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    quarantined: int | None
    returned: int | None


class RecallOut(_Out):
    id: int
    state: str
    reason: str
    classification: str | None
    criteria: RecallCriteria
    opened_at: datetime
    opened_by: str
    all_acknowledged_at: datetime | None
    response_time_s: float | None
    impact: RecallImpact
    consignees: list[ConsigneeOut]


def recall_out(rec: store.RecallRecord) -> RecallOut:
    """The recall as the API shows it; the impact is the document recorded when it was opened."""
    return RecallOut(
        id=rec.id,
        state=rec.state,
        reason=rec.reason,
        classification=rec.classification,
        criteria=RecallCriteria.model_validate(rec.criteria),
        opened_at=rec.opened_at,
        opened_by=rec.opened_by,
        all_acknowledged_at=rec.all_acknowledged_at,
        response_time_s=rec.response_time_s,
        impact=RecallImpact.model_validate(rec.impact),
        consignees=[
            ConsigneeOut(
                id=c.id,
                shipment=c.shipment_id,
                consignee=c.consignee,
                consignee_gln=c.consignee_gln,
                quantity=c.quantity,
                notified_at=c.notified_at,
                acknowledged_at=c.acknowledged_at,
                acknowledged_by=c.acknowledged_by,
                quarantined=c.quarantined,
                returned=c.returned,
            )
            for c in rec.consignees
        ],
    )


@router.post(
    "/recalls",
    status_code=status.HTTP_201_CREATED,
    response_model=RecallOut,
    responses=responses(*WITH_BODY, 404),
)
def create_recall(body: RecallCreate, conn: Conn, caller: Caller) -> RecallOut:
    """Open a recall; the response carries its impact, worked out in the same transaction.
    Exactly one way to name the lots: `lots` (with `gtin` unless each entry is GS1 data),
    `serials` with `gtin`, `device` with `from` and `to` (`to` after `from`), or `alert`;
    422 otherwise, or when the lots are unknown, the device unknown, or nothing is reached;
    404 when `alert` is not an alert of the caller's organization."""
    caller.require(Permission.DISPOSITION)
    request = RecallRequest(
        reason=body.reason,
        classification=body.classification,
        gtin=body.gtin,
        lots=tuple(body.lots),
        serials=tuple(body.serials),
        device=body.device,
        start=body.from_,
        end=body.to,
        alert_id=body.alert,
    )
    return recall_out(open_recall(conn, org=caller.org_id, request=request, actor=caller.name))


@router.get("/recalls/{recall_id}", response_model=RecallOut, responses=responses(*AUTHED, 404))
def get_recall(recall_id: RecallIdPath, conn: Conn, caller: Caller) -> RecallOut:
    caller.require(Permission.READ)
    return recall_out(store.get_recall(conn, org=caller.org_id, recall_id=recall_id))


@router.post(
    "/recalls/{recall_id}/consignees/{consignee_id}/acknowledge",
    response_model=RecallOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def acknowledge_consignee(
    recall_id: RecallIdPath, consignee_id: ConsigneeIdPath, body: AcknowledgeBody, conn: Conn, caller: Caller
) -> RecallOut:
    """A consignee confirmed the recall, with the quantity it quarantined or returned (409 when
    it already did, or the recall is closed)."""
    caller.require(Permission.ACKNOWLEDGE)
    rec = acknowledge(
        conn,
        org=caller.org_id,
        recall_id=recall_id,
        consignee_id=consignee_id,
        quarantined=body.quarantined,
        returned=body.returned,
        actor=caller.name,
    )
    return recall_out(rec)
