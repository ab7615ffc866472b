"""Lots: where a lot travelled, with which loggers, its excursions and its readings."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import Caller, Conn
from api.schemas import alert_public
from coldchain.errors import ValidationError
from coldchain.gs1 import digital_link, normalize_gtin
from rules.lot_figures import Leg, LoggerSeries, lot_figures
from storage import alerts, profiles, readings, registry, rules_store

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


@router.get("/lots/{gtin}/{lot}")
def get_lot(gtin: str, lot: str, conn: Conn, caller: Caller) -> dict[str, Any]:
    rec = registry.get_lot(conn, org=caller.org_id, gtin=normalize_gtin(gtin), lot=lot)
    excursions = alerts.list_alerts(conn, org=caller.org_id, shipment_keys=list(rec.shipment_keys))
    legs = [
        Leg(
            shipment_id=leg.shipment_id,
            profile=profiles.resolve(
                conn, org=caller.org_id, profile_id=leg.profile_id, version=leg.profile_version
            ),
            loggers=tuple(LoggerSeries(dev, t, c) for dev, (t, c) in leg.loggers.items()),
        )
        for leg in rules_store.lot_legs(conn, org=caller.org_id, shipment_keys=list(rec.shipment_keys))
    ]
    figures = lot_figures(legs, stability_budget_s=rec.stability_budget_s)
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
        "stability_budget_remaining_s": figures.stability_budget_remaining_s,
        "worst_logger_per_shipment": figures.worst_logger,
    }


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
    rec = registry.get_lot(conn, org=caller.org_id, gtin=normalize_gtin(gtin), lot=lot)
    rows = readings.lot_readings(
        conn, shipment_keys=list(rec.shipment_keys), start=from_, end=to, bucket=width, limit=limit
    )
    return {
        "gtin": rec.lot.gtin,
        "lot": rec.lot.lot,
        "bucket": bucket or "raw",
        "readings": rows,
    }
