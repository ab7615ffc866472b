"""Recalls: from what a recall names (lots of a GTIN, a logger and a time window, or an excursion)
to its impact: every shipment that carried the lots, its consignee and quantities, the loggers
that rode with it, its excursions, each lot's stability budget left, and evidence links; then
the recall record with one consignee per shipment, their acknowledgements, and the response time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from coldchain.errors import ValidationError
from coldchain.gs1 import GS1Error, digital_link, normalize_gtin, validate_lot
from coldchain.gs1 import parse as parse_gs1
from rules.mkt import mkt_of_log_means
from storage import recalls as store

CLASSIFICATIONS = ("I", "II", "III")


@dataclass(frozen=True, slots=True)
class RecallRequest:
    """What to recall: `lots` of `gtin` (each a lot number or GS1 data naming one), or the lots
    of `gtin` holding any of `serials`, or every lot that rode with `device` in [`start`, `end`),
    or the lots of the excursion `alert_id`."""

    reason: str
    classification: str | None = None
    gtin: str | None = None
    lots: tuple[str, ...] = ()
    serials: tuple[str, ...] = ()
    device: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    alert_id: int | None = None

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValidationError("a recall needs a reason", field="reason")
        if self.classification is not None and self.classification not in CLASSIFICATIONS:
            raise ValidationError("classification must be I, II or III", field="classification")
        ways = sum([bool(self.lots), bool(self.serials), self.device is not None, self.alert_id is not None])
        if ways != 1:
            raise ValidationError(
                "name lots (gtin and lots), serials (gtin and serials), a logger and a window"
                " (device, from, to), or an alert",
                field="lots",
            )
        if self.serials and self.gtin is None:
            raise ValidationError("serials need the gtin", field="gtin")
        if self.device is not None:
            if self.start is None or self.end is None:
                raise ValidationError("a logger recall needs from and to", field="from")
            if self.end <= self.start:
                raise ValidationError("the window must end after it starts", field="to")

    def criteria(self) -> dict[str, Any]:
        if self.device is not None:
            assert self.start is not None and self.end is not None
            return {"device": self.device, "from": self.start.isoformat(), "to": self.end.isoformat()}
        if self.alert_id is not None:
            return {"alert": self.alert_id}
        if self.serials:
            return {"gtin": self.gtin, "serials": list(self.serials)}
        return {"gtin": self.gtin, "lots": list(self.lots)}


def named_lots(request: RecallRequest) -> list[store.LotKey]:
    """(GTIN, lot) pairs from a lots recall; an entry may be GS1 data (HRI, Digital Link, ...)."""
    out: list[store.LotKey] = []
    for entry in request.lots:
        if entry[:1] in ("(", "]") or "://" in entry:
            try:
                data = parse_gs1(entry)
            except GS1Error as exc:
                raise ValidationError(str(exc), field="lots") from None
            if data.gtin is None or data.lot is None:
                raise ValidationError(f"{entry!r} names no GTIN and lot", field="lots")
            if request.gtin is not None and normalize_gtin(request.gtin) != data.gtin:
                raise ValidationError(f"{entry!r} is not of GTIN {request.gtin}", field="lots")
            out.append((data.gtin, data.lot))
            continue
        if request.gtin is None:
            raise ValidationError("lots by number need the gtin", field="gtin")
        out.append((normalize_gtin(request.gtin), validate_lot(entry)))
    return sorted(set(out))


def resolve_lots(conn: psycopg.Connection, *, org: int, request: RecallRequest) -> list[store.LotKey]:
    if request.device is not None:
        assert request.start is not None and request.end is not None
        if not store.device_known(conn, org=org, device_id=request.device):
            raise ValidationError(f"unknown device {request.device!r}", field="device")
        lots = store.lots_with_device(
            conn, org=org, device_id=request.device, start=request.start, end=request.end
        )
    elif request.alert_id is not None:
        lots = store.lots_of_alert(conn, org=org, alert_id=request.alert_id)
    elif request.serials:
        assert request.gtin is not None
        lots = store.lots_with_serials(
            conn, org=org, gtin=normalize_gtin(request.gtin), serials=list(request.serials)
        )
    else:
        lots = named_lots(request)
        known = store.registered_lots(conn, org=org, lots=lots)
        unknown = [f"{g}/{n}" for g, n in lots if (g, n) not in known]
        if unknown:
            raise ValidationError("unknown lots: " + ", ".join(unknown), field="lots")
    if not lots:
        raise ValidationError("the recall reaches no lot", field="lots")
    return lots


def _iso(value: date | datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def lot_mkt(legs: list[store.LegMkt]) -> float | None:
    """A lot's MKT over its legs (each by its worst logger), joined from the series' running MKT
    as lot_figures joins the readings. None when a leg's MKT is not known yet, or the legs were
    judged with different ΔH/R (their sums cannot be joined without the readings)."""
    parts: list[tuple[float, float]] = []
    dhrs: set[float] = set()
    for leg in legs:
        if leg.log_mean is None or leg.weight_ms is None or leg.delta_h_over_r_k is None:
            return None
        parts.append((leg.log_mean, leg.weight_ms))
        dhrs.add(leg.delta_h_over_r_k)
    if len(dhrs) != 1:
        return None
    return round(mkt_of_log_means(parts, dhrs.pop()), 3)


def impact_document(impact: store.Impact) -> dict[str, Any]:
    """The impact as the API shows it and the recall record keeps it."""
    rides: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ride in impact.rides:
        rides[ride.shipment_key].append(
            {"id": ride.device_id, "from": _iso(ride.start), "to": _iso(ride.end)}
        )
    excursions: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in impact.excursions:
        excursions[e.shipment_key].append(
            {
                "id": e.id,
                "kind": e.kind,
                "severity": e.severity,
                "state": e.state,
                "started_at": _iso(e.started_at),
                "ended_at": _iso(e.ended_at),
                "peak_c": e.peak_c,
                "disposition": e.disposition,
                "evidence": f"/api/v1/alerts/{e.id}/evidence",
            }
        )
    shipments: dict[int, dict[str, Any]] = {}
    for line in impact.lines:
        shipment = shipments.get(line.shipment_key)
        if shipment is None:
            shipment = shipments[line.shipment_key] = {
                "id": line.shipment_id,
                "origin": line.origin,
                "destination": line.destination,
                "destination_gln": line.destination_gln,
                "carrier": line.carrier,
                "mode": line.mode,
                "lots": [],
                "quantity": 0,
                "devices": rides.get(line.shipment_key, []),
                "excursions": excursions.get(line.shipment_key, []),
                "evidence": f"/api/v1/shipments/{line.shipment_id}/evidence",
            }
        shipment["lots"].append({"gtin": line.gtin, "lot": line.lot, "quantity": line.quantity})
        shipment["quantity"] += line.quantity or 0
    legs: dict[store.LotKey, list[store.LegMkt]] = defaultdict(list)
    for leg in impact.legs:
        legs[(leg.gtin, leg.lot)].append(leg)
    lots = [
        {
            "gtin": lot.gtin,
            "lot": lot.lot,
            "expiry": _iso(lot.expiry),
            "quantity": lot.quantity,
            "stability_budget_s": lot.stability_budget_s,
            "stability_budget_spent_s": lot.spent_s,
            "stability_budget_credited_s": lot.credited_s,
            "stability_budget_remaining_s": lot.remaining_s,
            "mkt_c": lot_mkt(legs.get((lot.gtin, lot.lot), [])),
            "disposition": lot.disposition,
            "shipments": sorted(
                {line.shipment_id for line in impact.lines if (line.gtin, line.lot) == (lot.gtin, lot.lot)}
            ),
            "digital_link": digital_link(lot.gtin, lot.lot),
            "evidence": f"/api/v1/lots/{lot.gtin}/{lot.lot}/evidence",
        }
        for lot in impact.lots
    ]
    devices = sorted({ride.device_id for ride in impact.rides})
    return {
        "shipments": list(shipments.values()),
        "lots": lots,
        "devices": devices,
        "totals": {
            "shipments": len(shipments),
            "lots": len(lots),
            "consignees": len(shipments),
            "quantity": sum(s["quantity"] for s in shipments.values()),
            "excursions": len(impact.excursions),
            "devices": len(devices),
        },
    }


def open_recall(
    conn: psycopg.Connection, *, org: int, request: RecallRequest, actor: str
) -> store.RecallRecord:
    """Work out the impact and record the recall with one consignee per shipment reached."""
    with conn.transaction():
        lots = resolve_lots(conn, org=org, request=request)
        impact = store.impact(conn, org=org, lots=lots)
        document = impact_document(impact)
        consignees: dict[int, tuple[int, str | None, str | None, int | None]] = {}
        for line in impact.lines:
            key = line.shipment_key
            quantity = (consignees[key][3] or 0) if key in consignees else 0
            consignees[key] = (key, line.destination, line.destination_gln, quantity + (line.quantity or 0))
        recall_id = store.create_recall(
            conn,
            org=org,
            reason=request.reason,
            classification=request.classification,
            criteria=request.criteria(),
            impact_document=document,
            lots=lots,
            consignees=list(consignees.values()),
            actor=actor,
        )
        notify_consignees(conn, org=org, recall_id=recall_id)
    return store.get_recall(conn, org=org, recall_id=recall_id)


def notify_consignees(conn: psycopg.Connection, *, org: int, recall_id: int) -> int:
    """One outbox row per contact of each consignee and per channel the contact has (SMS, e-mail,
    webhook), in the caller's transaction: the notification worker delivers them with retries,
    and the recall becomes `notifying`. A consignee with no contact is left to be told by hand
    (its `notifications` stay empty)."""
    messages: list[tuple[int, str, str, str]] = []
    for c in store.consignee_contacts(conn, org=org, recall_id=recall_id):
        for channel, recipient in (("sms", c.phone), ("email", c.email), ("webhook", c.webhook_url)):
            if recipient:
                messages.append((c.consignee_id, c.contact_id, channel, recipient))
    return store.queue_notifications(conn, org=org, recall_id=recall_id, messages=messages)


def acknowledge(
    conn: psycopg.Connection,
    *,
    org: int,
    recall_id: int,
    consignee_id: int,
    quarantined: int | None,
    returned: int | None,
    actor: str,
) -> store.RecallRecord:
    with conn.transaction():
        store.acknowledge(
            conn,
            org=org,
            recall_id=recall_id,
            consignee_id=consignee_id,
            quarantined=quarantined,
            returned=returned,
            actor=actor,
        )
    return store.get_recall(conn, org=org, recall_id=recall_id)


def close_recall(conn: psycopg.Connection, *, org: int, recall_id: int, actor: str, comment: str) -> None:
    """Close the recall in the caller's transaction (which signs it): only once every consignee
    has acknowledged, and only once."""
    store.lock_for_close(conn, org=org, recall_id=recall_id)
    store.close(conn, org=org, recall_id=recall_id, actor=actor, comment=comment)
