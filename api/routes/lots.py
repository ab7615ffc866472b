"""Lots: where a lot travelled, with which loggers, its excursions and its readings."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from api import esign, partner_view
from api.deps import AppSettings, Caller, Conn
from api.schemas import CreditBody, alert_public
from coldchain.access import Permission
from coldchain.errors import ValidationError
from coldchain.gs1 import digital_link, normalize_gtin
from rules.lot_figures import Leg, LoggerSeries, LotFigures, lot_figures
from storage import alerts, lot_budget, profiles, readings, registry, rules_store

router = APIRouter()
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
    legs = [
        Leg(
            shipment_id=leg.shipment_id,
            profile=profiles.resolve(conn, org=org, profile_id=leg.profile_id, version=leg.profile_version),
            loggers=tuple(LoggerSeries(dev, t, c) for dev, (t, c) in leg.loggers.items()),
        )
        for leg in rules_store.lot_legs(conn, org=org, shipment_keys=list(rec.shipment_keys))
    ]
    return lot_figures(legs, stability_budget_s=rec.stability_budget_s)


@router.get("/lots/{gtin}/{lot}")
def get_lot(gtin: str, lot: str, conn: Conn, caller: Caller) -> dict[str, Any]:
    org, rec = partner_view.lot(conn, caller, normalize_gtin(gtin), lot)  # a partner: shared legs only
    excursions = alerts.list_alerts(conn, org=org, shipment_keys=list(rec.shipment_keys))
    figures = _figures(conn, org, rec)
    credits = lot_budget.credits(conn, org=org, gtin=rec.lot.gtin, lot=rec.lot.lot)
    if org != caller.org_id:  # a partner sees excursions of "alerts" shares only, and no QA credits
        seen = partner_view.shared_ids(conn, caller, org, "alerts")
        excursions = [a for a in excursions if a.shipment_id in seen]
        credits = []
    credited = sum(c["seconds"] for c in credits)
    for credit in credits:
        credit["signatures"] = esign.shown(
            conn, org=caller.org_id, entity="lot_budget_credit", key=str(credit["id"]),
            record=esign.credit_record(rec.lot.gtin, rec.lot.lot, credit),
        )
    remaining = figures.stability_budget_remaining_s
    return {
        "gtin": rec.lot.gtin,
        "lot": rec.lot.lot,
        "expiry": rec.lot.expiry,
        "digital_link": digital_link(rec.lot.gtin, rec.lot.lot),
        "shipments": list(rec.shipments),
        "devices": list(rec.devices),
        "excursions": [alert_public(a) for a in excursions],
        "mkt_c": figures.mkt_c,
        "time_out_of_range_s": figures.time_out_of_range_s,
        "outside_labelled_range_s": figures.outside_labelled_range_s,
        "stability_budget_s": figures.stability_budget_s,
        "stability_budget_credited_s": credited,
        "stability_budget_remaining_s": None if remaining is None else remaining + credited,
        "stability_budget_credits": credits,
        "worst_logger_per_shipment": figures.worst_logger,
    }


@router.post("/lots/{gtin}/{lot}/credits", status_code=status.HTTP_201_CREATED)
def credit_budget(
    gtin: str, lot: str, body: CreditBody, conn: Conn, caller: Caller, settings: AppSettings
) -> dict[str, Any]:
    """QA credits time back to the lot's stability budget, with a reason (audited), under the
    signer's e-signature. A credit that leaves budget again resolves the lot's open budget alert."""
    caller.require(Permission.DISPOSITION)
    signature = esign.require(body.signature)
    rec = registry.get_lot(conn, org=caller.org_id, gtin=normalize_gtin(gtin), lot=lot)
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
        credit["signatures"] = [signed.public()]
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
    return {**credit, "stability_budget_remaining_s": remaining, "resolved_alerts": resolved}


@router.get("/lots/{gtin}/{lot}/readings")
def lot_readings(
    gtin: str,
    lot: str,
    conn: Conn,
    caller: Caller,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    bucket: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500_000)] = 100_000,
) -> dict[str, Any]:
    width = parse_bucket(bucket)
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise ValidationError(f"{name} needs a UTC offset", field=name)
    _, rec = partner_view.lot(conn, caller, normalize_gtin(gtin), lot, need="readings")
    rows = readings.lot_readings(
        conn, shipment_keys=list(rec.shipment_keys), start=from_, end=to, bucket=width, limit=limit
    )
    return {
        "gtin": rec.lot.gtin,
        "lot": rec.lot.lot,
        "bucket": bucket or "raw",
        "readings": rows,
    }
