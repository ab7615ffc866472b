"""Recalls: open one by lots, by a logger's window or by an excursion, read its impact, record
each consignee's acknowledgement (the last one fixes the recall's response time)."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated, Literal, cast
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import HTMLResponse
from pydantic import Field

from api import esign
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.schemas import (
    LOT_PATTERN,
    REASON_PATTERN,
    Count,
    DeviceId,
    Gtin,
    Moment,
    RowId,
    SignatureIn,
    SignatureOut,
    _In,
    _Out,
    signature_out,
)
from coldchain.access import Permission
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from coldchain.esignature import Signature
from coldchain.settings import Settings
from erp.recalls import RecallRequest, acknowledge, open_recall
from erp.recalls import close_recall as close_recall_record
from notify.delivery import AckLinkExpired, AckLinkInvalid
from notify.links import RecallAckClaims, verify_recall_ack_token
from storage import recalls as store
from storage import signatures

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
    mkt_c: float | None = Field(
        default=None,
        description="MKT over every leg (each by its worst logger), from the rules' running MKT;"
        " null while a leg's is not known",
    )
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


class ConsigneeNotification(_Out):
    channel: str
    state: str


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
    notifications: list[ConsigneeNotification] = Field(
        default=[], description="the messages queued to the consignee's contacts and where each stands"
    )


RecallState = Literal["open", "notifying", "closed"]


class RecallOut(_Out):
    id: int
    state: RecallState
    reason: str
    classification: str | None
    criteria: RecallCriteria
    opened_at: datetime
    opened_by: str
    all_acknowledged_at: datetime | None
    response_time_s: float | None
    impact: RecallImpact
    consignees: list[ConsigneeOut]
    closed_at: datetime | None = None
    closed_by: str | None = None
    signatures: list[SignatureOut] = Field(default=[], description="the closing e-signature, checked")


def recall_out(rec: store.RecallRecord, signed: list[Signature] | None = None) -> RecallOut:
    """The recall as the API shows it; the impact is the document recorded when it was opened."""
    return RecallOut(
        id=rec.id,
        state=cast(RecallState, rec.state),
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
                notifications=[ConsigneeNotification(channel=ch, state=st) for ch, st in c.notifications],
            )
            for c in rec.consignees
        ],
        closed_at=rec.closed_at,
        closed_by=rec.closed_by,
        signatures=[signature_out(sig) for sig in signed or []],
    )


def _shown(conn: Conn, org: int, rec: store.RecallRecord) -> RecallOut:
    """Every view of a recall shows its signatures, checked against the recall as it is now
    (rebuilt only when there is a signature to check)."""
    if not signatures.for_records(conn, org=org, entity="recall", keys=[str(rec.id)]):
        return recall_out(rec)
    record = esign.recall_record(conn, org=org, recall_id=rec.id)
    return recall_out(rec, esign.shown(conn, org=org, entity="recall", key=str(rec.id), record=record))


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
    return _shown(
        conn, caller.org_id, open_recall(conn, org=caller.org_id, request=request, actor=caller.name)
    )


class RecallSummaryOut(_Out):
    id: int
    state: RecallState
    reason: str
    classification: str | None
    opened_at: datetime
    opened_by: str
    consignees: int
    acknowledged: int = Field(description="consignees that acknowledged so far")
    all_acknowledged_at: datetime | None
    response_time_s: float | None
    closed_at: datetime | None


class RecallKpisOut(_Out):
    recalls: int
    open: int
    notifying: int
    closed: int
    answered: int = Field(description="recalls whose every consignee acknowledged")
    median_response_time_s: float | None = Field(description="opened to every consignee acknowledged")
    p90_response_time_s: float | None
    max_response_time_s: float | None


class RecallCloseBody(_In):
    comment: Annotated[str, Field(min_length=1, max_length=4000, pattern=REASON_PATTERN)] | None = None
    signature: SignatureIn | None = Field(
        default=None, description="required: QA's e-signature (21 CFR Part 11); 422 without it"
    )


@router.get("/recalls", response_model=list[RecallSummaryOut], responses=responses(*AUTHED))
def list_recalls(
    conn: Conn,
    caller: Caller,
    state: Annotated[list[RecallState] | None, Query(description="repeat for several states")] = None,
    before: Annotated[int | None, Query(ge=1, le=2**53 - 1, description="page on: ids below this")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[RecallSummaryOut]:
    """The organization's recalls, newest first."""
    caller.require(Permission.READ)
    found = store.list_recalls(
        conn, org=caller.org_id, states=list(state) if state else None, limit=limit, before=before
    )
    return [
        RecallSummaryOut(
            id=r.id,
            state=cast(RecallState, r.state),
            reason=r.reason,
            classification=r.classification,
            opened_at=r.opened_at,
            opened_by=r.opened_by,
            consignees=r.consignees,
            acknowledged=r.acknowledged,
            all_acknowledged_at=r.all_acknowledged_at,
            response_time_s=r.response_time_s,
            closed_at=r.closed_at,
        )
        for r in found
    ]


@router.get("/recalls/kpis", response_model=RecallKpisOut, responses=responses(*AUTHED))
def recall_kpis(
    conn: Conn,
    caller: Caller,
    since: Annotated[Moment | None, Query(description="only recalls opened at or after this time")] = None,
) -> RecallKpisOut:
    """Recalls by state and the response time (opened to every consignee acknowledged): median,
    90th percentile and maximum over the recalls fully answered."""
    caller.require(Permission.READ)
    k = store.kpis(conn, org=caller.org_id, since=since)
    return RecallKpisOut(
        recalls=k.recalls,
        open=k.open,
        notifying=k.notifying,
        closed=k.closed,
        answered=k.answered,
        median_response_time_s=k.median_response_time_s,
        p90_response_time_s=k.p90_response_time_s,
        max_response_time_s=k.max_response_time_s,
    )


@router.get("/recalls/{recall_id}", response_model=RecallOut, responses=responses(*AUTHED, 404))
def get_recall(recall_id: RecallIdPath, conn: Conn, caller: Caller) -> RecallOut:
    """The recall with its impact, consignees, notifications and checked signatures."""
    caller.require(Permission.READ)
    return _shown(conn, caller.org_id, store.get_recall(conn, org=caller.org_id, recall_id=recall_id))


@router.post(
    "/recalls/{recall_id}/close",
    response_model=RecallOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def close_recall(
    recall_id: RecallIdPath, body: RecallCloseBody, conn: Conn, caller: Caller, settings: AppSettings
) -> RecallOut:
    """QA closes the recall once every consignee has acknowledged (409 before, or when already
    closed), under the signer's e-signature (password re-entered; 422 without one, 403 for an
    API key). The signature covers the recall as closed."""
    caller.require(Permission.DISPOSITION)
    signature = esign.require(body.signature)
    # 404 and 409 before a password is spent; checked again under the lock when closing.
    store.lock_for_close(conn, org=caller.org_id, recall_id=recall_id)
    signer = esign.reauthenticate(conn, settings, caller, signature)
    with conn.transaction():
        close_recall_record(
            conn, org=caller.org_id, recall_id=recall_id, actor=caller.name, comment=body.comment or "closed"
        )
        record = esign.recall_record(conn, org=caller.org_id, recall_id=recall_id)
        signed = esign.sign(
            conn,
            caller,
            signer,
            signature,
            entity="recall",
            key=str(recall_id),
            action="close",
            record=record,
        )
    return recall_out(store.get_recall(conn, org=caller.org_id, recall_id=recall_id), [signed])


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
    return _shown(conn, caller.org_id, rec)


# -- acknowledge links: a consignee answers from the message, without an account ---------------

ack_router = APIRouter(tags=["recalls"], include_in_schema=False)

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:36em;margin:2em auto;padding:0 1em">
<h2>{title}</h2>{body}</body></html>"""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body),
        status_code=status_code,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _claims(token: str, settings: Settings) -> RecallAckClaims | HTMLResponse:
    try:
        return verify_recall_ack_token(settings.secret_key.get_secret_value(), token)
    except AckLinkExpired:
        return _page("Link expired", "<p>This acknowledge link has expired. Contact the sender.</p>", 410)
    except AckLinkInvalid:
        return _page("Invalid link", "<p>This acknowledge link is not valid.</p>", 403)


def _quantity(form: dict[str, str], name: str) -> int | None:
    text = form.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > 2**31 - 1:
        raise ValidationError(f"{name} must be a whole number of units", field=name)
    return int(text)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


Form = Annotated[dict[str, str], Depends(_form)]


@ack_router.get("/recall-ack/{token}")
def recall_ack_page(token: str, conn: Conn, settings: AppSettings) -> HTMLResponse:
    """The page the link opens: the recall and a form. It changes nothing (mail scanners open
    links on their own); the consignee's click POSTs."""
    claims = _claims(token, settings)
    if isinstance(claims, HTMLResponse):
        return claims
    try:
        m = store.message(conn, consignee_id=claims.consignee_id)
    except NotFoundError:
        return _page("Recall not found", "<p>The recall no longer exists.</p>", 404)
    lots = "".join(
        f"<li>{html.escape(g)} lot {html.escape(lot)}: {'-' if q is None else q}</li>"
        for g, lot, q in m.lines
    )
    body = f"<p>{html.escape(m.reason)}</p><p>Shipment {html.escape(m.shipment_id)}</p><ul>{lots}</ul>"
    if m.acknowledged_at is not None or m.state == "closed":
        return _page(f"Recall {m.recall_id}: already answered", body)
    body += (
        "<form method='post'><p><label>Quarantined <input name='quarantined' inputmode='numeric'></label></p>"
        "<p><label>Returned <input name='returned' inputmode='numeric'></label></p>"
        "<p><button type='submit'>Acknowledge the recall</button></p></form>"
    )
    return _page(f"Recall {m.recall_id}", body)


@ack_router.post("/recall-ack/{token}")
def recall_ack_confirm(token: str, form: Form, conn: Conn, settings: AppSettings) -> HTMLResponse:
    """Acknowledge for the consignee with the quantities given; the link's nonce is stored in the
    same transaction, so it works once, and only for a contact the recall was sent to."""
    claims = _claims(token, settings)
    if isinstance(claims, HTMLResponse):
        return claims
    try:
        quarantined, returned = _quantity(form, "quarantined"), _quantity(form, "returned")
    except ValidationError as exc:
        return _page("Not acknowledged", f"<p>{html.escape(str(exc))}.</p>", 422)
    try:
        m = store.message(conn, consignee_id=claims.consignee_id)
        if not store.contact_speaks_for(conn, consignee_id=claims.consignee_id, contact_id=claims.contact_id):
            return _page("Not allowed", "<p>This contact may not acknowledge this recall.</p>", 403)
        with conn.transaction():
            store.use_ack_nonce(
                conn, nonce=claims.nonce, consignee_id=claims.consignee_id, contact_id=claims.contact_id
            )
            store.acknowledge(
                conn,
                org=m.org_id,
                recall_id=m.recall_id,
                consignee_id=m.consignee_id,
                quarantined=quarantined,
                returned=returned,
                actor=f"contact {claims.contact_id} (link)",
            )
    except NotFoundError:
        return _page("Not found", "<p>The recall no longer exists.</p>", 404)
    except ConflictError as exc:
        return _page("Not acknowledged", f"<p>{html.escape(str(exc))}.</p>", 409)
    return _page(f"Recall {m.recall_id} acknowledged", "<p>Thank you.</p>")
