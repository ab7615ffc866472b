"""Recalls: open one by lots, by a logger's window or by an excursion, read its impact, record
each consignee's acknowledgement (the last one fixes the recall's response time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller, Conn
from coldchain.access import Permission
from erp.recalls import RecallRequest, acknowledge, open_recall, recall_document
from storage import recalls as store

router = APIRouter(tags=["recalls"])


class RecallCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    reason: str = Field(min_length=1, max_length=2000)
    classification: Literal["I", "II", "III"] | None = None
    gtin: str | None = Field(default=None, examples=["09506000134352"])
    lots: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="lot numbers of `gtin`, or GS1 data naming a lot (HRI, element string, Digital Link)",
    )
    serials: list[str] = Field(
        default_factory=list, max_length=10_000, description="serials of `gtin`: recall the lots holding them"
    )
    device: str | None = Field(default=None, description="a logger: recall every lot that rode with it")
    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None
    alert: int | None = Field(default=None, description="an excursion alert: recall the lots of its shipment")


class AcknowledgeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quarantined: int | None = Field(default=None, ge=0)
    returned: int | None = Field(default=None, ge=0)


class RecallPublic(BaseModel):
    id: int
    state: str
    reason: str
    classification: str | None
    criteria: dict[str, Any]
    opened_at: str
    opened_by: str
    all_acknowledged_at: str | None
    response_time_s: float | None
    impact: dict[str, Any]
    consignees: list[dict[str, Any]]


@router.post("/recalls", status_code=status.HTTP_201_CREATED, response_model=RecallPublic)
def create_recall(body: RecallCreate, conn: Conn, caller: Caller) -> dict[str, Any]:
    """Open a recall; the response carries its impact, worked out in the same transaction."""
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
    rec = open_recall(conn, org=caller.org_id, request=request, actor=caller.name)
    return recall_document(rec)


@router.get("/recalls/{recall_id}", response_model=RecallPublic)
def get_recall(recall_id: int, conn: Conn, caller: Caller) -> dict[str, Any]:
    caller.require(Permission.READ)
    return recall_document(store.get_recall(conn, org=caller.org_id, recall_id=recall_id))


@router.post("/recalls/{recall_id}/consignees/{consignee_id}/acknowledge", response_model=RecallPublic)
def acknowledge_consignee(
    recall_id: int, consignee_id: int, body: AcknowledgeBody, conn: Conn, caller: Caller
) -> dict[str, Any]:
    """A consignee confirmed the recall, with the quantity it quarantined or returned."""
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
    return recall_document(rec)
