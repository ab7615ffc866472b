"""Lots: where a lot travelled, with which loggers, its excursions and its readings."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse

from api import esign, partner_view
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.routes.gs1 import gs1_error
from api.schemas import (
    BUCKET_PATTERN,
    GTIN_PATTERN,
    LOT_SEGMENT_PATTERN,
    CreditBody,
    CreditOut,
    CreditResult,
    DispositionBody,
    DispositionOut,
    LotDispositionOut,
    LotOut,
    LotReadings,
    Moment,
    alert_out,
    check_gtin,
    signature_out,
)
from coldchain.access import Permission
from coldchain.disposition import MEANING, LotState, transition_refusal
from coldchain.domain import Disposition
from coldchain.errors import ConflictError, ValidationError
from coldchain.gs1 import GS1Error, digital_link, identify_lot, normalize_gtin
from evidence.model import lot_figures_of
from rules.lot_figures import LotFigures
from storage import alerts, lot_budget, lot_dispositions, readings, registry

router = APIRouter()

GtinPath = Annotated[
    str, Path(pattern=GTIN_PATTERN, examples=["09506000134352"], json_schema_extra={"format": "gtin"})
]
LotPath = Annotated[str, Path(pattern=LOT_SEGMENT_PATTERN, examples=["A123"])]
_BUCKET = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bucket(text: str | None) -> timedelta | None:
    """'raw' or nothing for raw readings, else a width like 30s, 5m, 1h, 1d."""
    if text is None or text == "raw":
        return None
    match = _BUCKET.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValidationError("bucket must look like 30s, 5m, 1h or 1d (or 'raw')", field="bucket")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _figures(conn: Conn, org: int, rec: registry.LotRecord) -> LotFigures:
    # The readings as the rules judged them (door data included): the same numbers as the
    # stored budget spend and the evidence.
    return lot_figures_of(conn, org=org, rec=rec)


@router.get("/lots/{gtin}/{lot}", tags=["lots"], response_model=LotOut, responses=responses(*AUTHED, 404))
def get_lot(gtin: GtinPath, lot: LotPath, conn: Conn, caller: Caller) -> LotOut:
    """A lot's journey and figures; a partner sees the legs shared with it only, and no QA credits."""
    org, rec = partner_view.lot(conn, caller, normalize_gtin(check_gtin(gtin)), lot)
    return _lot_out(conn, caller, org, rec)


# GS1 data in a query: no control characters but GS (FNC1 in an element string).
GS1_QUERY_PATTERN = r"^[^\x00-\x1c\x1e\x1f\x7f]+$"
_ID_RESPONSES = responses(*AUTHED, 404)
_ID_RESPONSES[422] = {
    **_ID_RESPONSES[422],
    "description": "A bad parameter, or `id` is not GS1 data naming a GTIN and a lot: then `field` is"
    " `id` and the error body also carries `ai` and `rule`, as POST /gs1/parse's",
}


@router.get("/lots", tags=["lots"], response_model=LotOut, responses=_ID_RESPONSES)
def get_lot_by_id(
    conn: Conn,
    caller: Caller,
    id: Annotated[
        str,
        Query(
            min_length=1,
            max_length=4096,
            pattern=GS1_QUERY_PATTERN,
            description="GS1 data naming the lot: a Digital Link URI, bracketed HRI, an element string"
            " or scan data with (01) and (10)",
            examples=["https://id.gs1.org/01/09506000134352/10/A123"],
        ),
    ],
) -> LotOut | JSONResponse:
    """The lot named by a scanned carrier, as GET /lots/{gtin}/{lot} answers it."""
    try:
        gtin, lot = identify_lot(id)
    except GS1Error as exc:
        return gs1_error(exc, field="id")
    org, rec = partner_view.lot(conn, caller, gtin, lot)
    return _lot_out(conn, caller, org, rec)


def _lot_out(conn: Conn, caller: Caller, org: int, rec: registry.LotRecord) -> LotOut:
    excursions = alerts.list_alerts(conn, org=org, shipment_keys=list(rec.shipment_keys))
    figures = _figures(conn, org, rec)
    credits = lot_budget.credits(conn, org=org, gtin=rec.lot.gtin, lot=rec.lot.lot)
    if org != caller.org_id:  # a partner sees excursions of "alerts" shares only, and no QA credits
        seen = partner_view.shared_ids(conn, caller, org, "alerts")
        excursions = [a for a in excursions if a.shipment_id in seen]
        credits = []
    credited = sum(c["seconds"] for c in credits)
    for credit in credits:
        credit["signatures"] = [
            signature_out(s)
            for s in esign.shown(
                conn, org=caller.org_id, entity="lot_budget_credit", key=str(credit["id"]),
                record=esign.credit_record(rec.lot.gtin, rec.lot.lot, credit),
            )
        ]
    remaining = figures.stability_budget_remaining_s
    disposition = None if org != caller.org_id else lot_disposition_out(conn, org, rec.lot.gtin, rec.lot.lot)
    return LotOut(
        gtin=rec.lot.gtin,
        lot=rec.lot.lot,
        expiry=rec.lot.expiry,
        digital_link=digital_link(rec.lot.gtin, rec.lot.lot),
        shipments=list(rec.shipments),
        devices=list(rec.devices),
        excursions=[alert_out(a) for a in excursions],
        mkt_c=figures.mkt_c,
        time_out_of_range_s=figures.time_out_of_range_s,
        outside_labelled_range_s=figures.outside_labelled_range_s,
        stability_budget_s=figures.stability_budget_s,
        stability_budget_credited_s=credited,
        stability_budget_remaining_s=None if remaining is None else remaining + credited,
        stability_budget_credits=[CreditOut.model_validate(c) for c in credits],
        worst_logger_per_shipment=figures.worst_logger,
        freeze_thaw_cycles=figures.freeze_thaw_cycles,
        disposition=disposition,
    )


def lot_disposition_out(conn: Conn, org: int, gtin: str, lot: str) -> LotDispositionOut:
    """The lot's state and every decision with its signatures, each checked against the row now."""
    decisions = lot_dispositions.history(conn, org=org, gtin=gtin, lot=lot)
    history = [
        DispositionOut(
            id=d.id, state=Disposition(d.state),
            previous=None if d.previous is None else Disposition(d.previous),
            comment=d.comment, decided_by=d.decided_by, decided_at=d.decided_at,
            signatures=[
                signature_out(s)
                for s in esign.shown(
                    conn, org=org, entity="lot_disposition", key=str(d.id), record=d.signed_record()
                )
            ],
        )
        for d in decisions
    ]
    state = LotState(decisions[-1].state) if decisions else LotState.PENDING
    return LotDispositionOut(state=state.value, history=history)


@router.post(
    "/lots/{gtin}/{lot}/disposition",
    tags=["lots"],
    status_code=status.HTTP_201_CREATED,
    response_model=LotDispositionOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def dispose_lot(
    gtin: GtinPath, lot: LotPath, body: DispositionBody, conn: Conn, caller: Caller, settings: AppSettings
) -> LotDispositionOut:
    """QA's disposition of the lot (release, quarantine or reject), with a comment, under the
    signer's e-signature: meaning `release` for a release, `rejection` for a rejection,
    `responsibility` for a quarantine (422 otherwise or without a signature; 403 for an API key or
    a caller without `qa`). 409 for a step out of order (a rejection is final; a released lot is
    quarantined before it is rejected; the same state twice) and for a release while an
    excursion of the lot is not closed with QA's disposition, or was closed as `reject`."""
    caller.require(Permission.DISPOSITION)
    signature = esign.require(body.signature)
    wanted = MEANING[body.disposition]
    if signature.meaning is not wanted:
        raise ValidationError(
            f"a {body.disposition.value} is signed with the meaning {wanted.value!r}",
            field="signature.meaning",
        )
    rec = registry.get_lot(conn, org=caller.org_id, gtin=normalize_gtin(check_gtin(gtin)), lot=lot)
    signer = esign.reauthenticate(conn, settings, caller, signature)
    with conn.transaction():
        current = lot_dispositions.current_state(
            conn, org=caller.org_id, gtin=rec.lot.gtin, lot=rec.lot.lot, lock=True
        )
        refusal = transition_refusal(current, body.disposition)
        if refusal is not None:
            raise ConflictError(refusal)
        if body.disposition is Disposition.RELEASE:
            blocking = lot_dispositions.blocking_excursions(
                conn, org=caller.org_id, shipment_keys=list(rec.shipment_keys)
            )
            if blocking:
                listed = ", ".join(
                    f"{i} ({'closed as reject' if st == 'closed' else st})" for i, st, _ in blocking
                )
                raise ConflictError(
                    "the lot cannot be released while excursions are not closed with QA's"
                    f" disposition or were rejected: {listed}"
                )
        decision = lot_dispositions.decide(
            conn, org=caller.org_id, gtin=rec.lot.gtin, lot=rec.lot.lot, decision=body.disposition,
            previous=current, comment=body.comment, actor=caller.name,
        )
        esign.sign(
            conn, caller, signer, signature, entity="lot_disposition", key=str(decision.id),
            action=f"lot_{body.disposition.value}", record=decision.signed_record(),
        )
    return lot_disposition_out(conn, caller.org_id, rec.lot.gtin, rec.lot.lot)


@router.post(
    "/lots/{gtin}/{lot}/credits",
    tags=["lots"],
    status_code=status.HTTP_201_CREATED,
    response_model=CreditResult,
    responses=responses(*WITH_BODY, 404, 409),
)
def credit_budget(
    gtin: GtinPath, lot: LotPath, body: CreditBody, conn: Conn, caller: Caller, settings: AppSettings
) -> CreditResult:
    """QA credits time back to the lot's stability budget, with a reason (audited), under the
    signer's e-signature (password re-entered; 422 without one, 403 for an API key). A credit that
    leaves budget again resolves the lot's open budget alert. 409 when the lot has no budget;
    422 when all credits together would exceed the time spent outside the labelled range, or
    `alert_id` is not an excursion of the lot."""
    caller.require(Permission.DISPOSITION)
    signature = esign.require(body.signature)
    rec = registry.get_lot(conn, org=caller.org_id, gtin=normalize_gtin(check_gtin(gtin)), lot=lot)
    figures = _figures(conn, caller.org_id, rec)
    signer = esign.reauthenticate(conn, settings, caller, signature)
    with conn.transaction():
        credit = lot_budget.add_credit(
            conn,
            org=caller.org_id,
            gtin=rec.lot.gtin,
            lot=rec.lot.lot,
            seconds=body.seconds,
            reason=body.reason,
            actor=caller.name,
            spent_s=figures.outside_labelled_range_s,
            alert_id=body.alert_id,
        )
        remaining = (figures.stability_budget_remaining_s or 0.0) + credit.pop("credited_s")
        signed = esign.sign(
            conn, caller, signer, signature, entity="lot_budget_credit", key=str(credit["id"]),
            action="credit_stability_budget",
            record=esign.credit_records(conn, org=caller.org_id, gtin=rec.lot.gtin, lot=rec.lot.lot)[
                credit["id"]
            ],
        )
        credit["signatures"] = [signature_out(signed)]
        resolved: list[int] = []
        if remaining > 0:
            for alert_id in lot_budget.open_budget_alerts(
                conn, org=caller.org_id, gtin=rec.lot.gtin, lot=rec.lot.lot
            ):
                alerts.transition(
                    conn,
                    org=caller.org_id,
                    alert_id=alert_id,
                    action="resolve",
                    actor=caller.name,
                    comment=f"stability budget restored by credit {credit['id']}: {body.reason}",
                )
                resolved.append(alert_id)
    return CreditResult(
        **credit, stability_budget_remaining_s=remaining, resolved_alerts=resolved
    )


@router.get(
    "/lots/{gtin}/{lot}/readings",
    tags=["lots"],
    response_model=LotReadings,
    responses=responses(*AUTHED, 404),
)
def lot_readings(
    gtin: GtinPath,
    lot: LotPath,
    conn: Conn,
    caller: Caller,
    from_: Annotated[Moment | None, Query(alias="from", description="RFC 3339 with an offset")] = None,
    to: Annotated[Moment | None, Query(description="RFC 3339 with an offset; exclusive")] = None,
    bucket: Annotated[
        str | None, Query(pattern=BUCKET_PATTERN, description="`raw` (default) or a width: 30s, 5m, 1h, 1d")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500_000)] = 100_000,
) -> Response:
    width = parse_bucket(bucket)
    _, rec = partner_view.lot(conn, caller, normalize_gtin(check_gtin(gtin)), lot, need="readings")
    rows = readings.lot_readings(
        conn, shipment_keys=list(rec.shipment_keys), start=from_, end=to, bucket=width, limit=limit
    )
    # Up to 500,000 rows: written by orjson in one call, not validated model by model (the rows
    # already have LotReadings' fields, in its order; the bytes equal the model's own JSON).
    body = {"gtin": rec.lot.gtin, "lot": rec.lot.lot, "bucket": bucket or "raw", "readings": rows}
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")
