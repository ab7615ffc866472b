"""EPCIS 2.0 capture from partners' systems, and the record of what was captured."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, error_response, responses
from api.schemas import MAX_SAFE_INT, SHIPMENT_SEGMENT_PATTERN, FieldProblem, _Out
from coldchain.access import Permission
from coldchain.errors import NotFoundError
from coldchain.settings import Settings
from erp.epcis_capture import CaptureRefused, CaptureReport, capture_document
from ingest.core import AcceptanceBounds
from ingest.files.importer import file_writer
from storage import epcis as store

router = APIRouter(tags=["epcis"])

# The request guard's limit for the capture path (api/app.py): about 400,000 time-stamped sensor
# reports. The document is parsed and checked in memory, so the limit bounds the memory a capture
# takes (a few times the body).
MAX_CAPTURE_BYTES = 64 * 1024 * 1024
MAX_LIST = 500

CaptureIdPath = Annotated[int, Path(ge=1, le=MAX_SAFE_INT, examples=[1])]
ShipmentPath = Annotated[str, Path(pattern=SHIPMENT_SEGMENT_PATTERN, examples=["SHP-2026-0001"])]


class CaptureOut(_Out):
    """What a capture did; `repeated` when the same bytes were captured before (nothing stored)."""

    capture_id: int
    sha256: str
    repeated: bool
    events: int
    new_events: int
    duplicate_events: int
    movements: int
    readings: int
    stored: int
    duplicates: int
    refused: int
    devices: list[str]
    shipments: list[str]


class CapturedEvent(_Out):
    event_key: str
    position: int
    type: str
    biz_step: str | None
    event_time: datetime


class CaptureRecord(_Out):
    """A kept capture: its outcome, who sent it, and the events it applied."""

    capture_id: int
    sha256: str
    size_bytes: int
    events: int
    new_events: int
    movements: int
    readings: int
    stored: int
    duplicates: int
    refused: int
    captured_by: str
    captured_at: datetime
    applied_events: list[CapturedEvent] | None = None


class MovementOut(_Out):
    step: str = Field(description="`shipping` or `receiving`")
    at: datetime
    gln: str | None
    ssccs: list[str]
    capture_id: int
    event_key: str


class ShipmentMovements(_Out):
    """A shipment's leg as captured EPCIS events record it."""

    shipment: str
    departed_at: datetime | None = Field(description="the earliest shipping event")
    arrived_at: datetime | None = Field(description="the latest receiving event")
    origin_gln: str | None
    destination_gln: str | None
    ssccs: list[str]
    movements: list[MovementOut]


_BODY = {
    "content": {
        "application/ld+json": {"schema": {"type": "object"}},
        "application/json": {"schema": {"type": "object"}},
    },
    "required": True,
    "description": "An EPCIS 2.0 document (`EPCISDocument`) in JSON or JSON-LD",
}
_CAPTURE = {
    200: {"model": CaptureOut, "description": "The same bytes were captured before: nothing stored"},
    202: {"model": CaptureOut, "description": "Captured: the document is kept and its events applied"},
    **responses(400, 401, 403, 413, 422),
}
_CAPTURE[400] = {
    **_CAPTURE[400],
    "description": "The document is refused whole and nothing was stored: not JSON, not valid"
    " against GS1's EPCIS 2.0 schema (date-times checked), no EPCIS context, a bizStep, disposition"
    " or extension field that is neither CBV nor namespaced, or master data it names that is not"
    " registered (logger, SSCC, shipment); `details` lists every problem (up to 1000)",
}
_CAPTURE[413] = {**_CAPTURE[413], "description": f"The document is larger than {MAX_CAPTURE_BYTES} bytes"}
_DOCUMENT = {
    200: {
        "description": "The document exactly as captured; `X-Content-SHA256` carries its SHA-256",
        "content": {"application/ld+json": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "X-Content-SHA256": {"description": "SHA-256 of the bytes (hex)", "schema": {"type": "string"}}
        },
    },
    **responses(*AUTHED, 404),
}


def _capture(conn: Any, raw: bytes, *, org: int, actor: str, settings: Settings) -> CaptureReport:
    writer = file_writer(AcceptanceBounds.from_settings(settings))
    with conn.transaction():
        return capture_document(conn, raw, org=org, actor=actor, writer=writer)


@router.post(
    "/epcis/capture",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CaptureOut,
    openapi_extra={"requestBody": _BODY},
    responses=_CAPTURE,
)
async def capture_epcis(request: Request, conn: Conn, caller: Caller, settings: AppSettings) -> Any:
    """Capture an EPCIS 2.0 document: checked whole, then applied in one transaction.

    Shipping/receiving ObjectEvents move shipments (actual departure and arrival, SSCCs, lots);
    sensor reports of registered loggers become readings through the ingest writer. Events
    captured before (same eventID, or the same event hash) are skipped: sending the same
    document again stores nothing and answers 200 (`repeated: true`).
    """
    caller.require(Permission.REGISTER)
    raw = await request.body()
    try:
        report = await run_in_threadpool(
            _capture, conn, raw, org=caller.org_id, actor=caller.name, settings=settings
        )
    except CaptureRefused as refused:
        more = (
            f" (the first {len(refused.problems)} are listed)"
            if refused.total > len(refused.problems)
            else ""
        )
        return error_response(
            status.HTTP_400_BAD_REQUEST,
            f"the EPCIS document was refused with {refused.total} problem(s){more}; nothing was stored",
            field="body",
            details=[FieldProblem(field=p.field, message=p.message).model_dump() for p in refused.problems],
        )
    return JSONResponse(
        CaptureOut.model_validate(report, from_attributes=True).model_dump(mode="json"),
        status_code=status.HTTP_200_OK if report.repeated else status.HTTP_202_ACCEPTED,
    )


def _record(c: store.StoredCapture, events: list[store.EventRow] | None = None) -> CaptureRecord:
    return CaptureRecord(
        capture_id=c.id,
        sha256=c.sha256,
        size_bytes=c.size_bytes,
        events=c.events,
        new_events=c.new_events,
        movements=c.movements,
        readings=c.readings,
        stored=c.stored,
        duplicates=c.duplicates,
        refused=c.refused,
        captured_by=c.captured_by,
        captured_at=c.captured_at,
        applied_events=None
        if events is None
        else [
            CapturedEvent(
                event_key=e.event_key,
                position=e.position,
                type=e.type,
                biz_step=e.biz_step,
                event_time=e.event_time,
            )
            for e in events
        ],
    )


@router.get("/epcis/captures", response_model=list[CaptureRecord], responses=responses(*AUTHED))
def list_captures(
    conn: Conn,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="at most this many")] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_SAFE_INT, description="only captures with a smaller id (paging)")
    ] = None,
) -> list[CaptureRecord]:
    """The organization's captures, newest first."""
    caller.require(Permission.READ)
    return [_record(c) for c in store.list_captures(conn, org=caller.org_id, limit=limit, before=before)]


@router.get("/epcis/captures/{capture_id}", response_model=CaptureRecord, responses=responses(*AUTHED, 404))
def get_capture(capture_id: CaptureIdPath, conn: Conn, caller: Caller) -> CaptureRecord:
    """One capture with the events it applied."""
    caller.require(Permission.READ)
    c = store.get_capture(conn, org=caller.org_id, capture_id=capture_id)
    if c is None:
        raise NotFoundError("EPCIS capture", str(capture_id))
    return _record(c, store.capture_events(conn, org=caller.org_id, capture_id=capture_id))


@router.get("/epcis/captures/{capture_id}/document", response_class=Response, responses=_DOCUMENT)
def get_capture_document(capture_id: CaptureIdPath, conn: Conn, caller: Caller) -> Response:
    """The captured document exactly as it arrived, with its SHA-256."""
    caller.require(Permission.READ)
    kept = store.capture_body(conn, org=caller.org_id, capture_id=capture_id)
    if kept is None:
        raise NotFoundError("EPCIS capture", str(capture_id))
    body, sha = kept
    return Response(body, media_type="application/ld+json", headers={"X-Content-SHA256": sha})


@router.get(
    "/shipments/{shipment_id}/movements", response_model=ShipmentMovements, responses=responses(*AUTHED, 404)
)
def get_shipment_movements(shipment_id: ShipmentPath, conn: Conn, caller: Caller) -> ShipmentMovements:
    """The shipment's actual departure and arrival, SSCCs and shipping/receiving events."""
    caller.require(Permission.READ)
    found = store.shipment_movements(conn, org=caller.org_id, shipment_id=shipment_id)
    if found is None:
        raise NotFoundError("shipment", shipment_id)
    leg, moves, units = found
    return ShipmentMovements(
        shipment=leg.id,
        departed_at=leg.departed_at,
        arrived_at=leg.arrived_at,
        origin_gln=leg.origin_gln,
        destination_gln=leg.destination_gln,
        ssccs=units,
        movements=[
            MovementOut(
                step=m.step,
                at=m.at,
                gln=m.gln,
                ssccs=list(m.ssccs),
                capture_id=m.capture_id,
                event_key=m.event_key,
            )
            for m in moves
        ],
    )
