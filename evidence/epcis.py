"""The evidence as a GS1 EPCIS 2.0 JSON-LD document: one ObjectEvent per leg and logger.

Each event observes the lot(s) at class level (the GS1 Digital Link of GTIN + lot in
`quantityList`) with bizStep `sensor_reporting`; its `sensorElementList` holds one element per
hour of readings (min, max and mean temperature, and humidity when measured) and one element per
excursion with the `ALARM_CONDITION` exception and the peak, and `cc:calibration` (namespace
`urn:coldchain:epcis:`) the certificates in force over the readings. A lot's disposition
decisions are ObjectEvents of their own (bizStep `inspecting`, CBV disposition `conformant`,
`non_sellable_other` or `non_conformant`, details in `cc:disposition`). It validates against GS1's schema
(evidence/standards/EPCIS-JSON-Schema.json) with date-time formats checked.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import orjson

from coldchain.gs1 import digital_link
from evidence import text
from evidence.model import Evidence, LegEvidence, LoggerEvidence
from evidence.tabular import iso_ms

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
# Our extension fields (each logger's calibration, a lot's disposition details) are namespaced.
NS, NS_URI = "cc", "urn:coldchain:epcis:"
INTERVAL_MS = 3_600_000
_HUMIDITY_KINDS = {"humidity"}
_EXCURSION_KINDS = {
    "single", "cumulative", "rate", "humidity", "mkt", "stability_budget", "door", "light", "shock",
}
# CBV sensor types of the handling kinds: light as Illuminance, a shock as Acceleration (reported
# in m/s², UN/CEFACT MSK; the profile counts g); a door open too long has no CBV type of its own
# and is reported as the Temperature alarm it causes (its peak is the warmest reading meanwhile).
_STANDARD_GRAVITY = 9.80665


def _urn(kind: str, value: str) -> str:
    return f"urn:coldchain:{kind}:{quote(value, safe='')}"


Interval = tuple[int, int, float, float, float, int]


def _times(ms: npt.NDArray[np.int64]) -> list[str]:
    """RFC 3339 strings for many times at once."""
    raw = text.rfc3339_ms(ms).tobytes().decode("ascii")
    w = text.TIME_WIDTH
    return [raw[i : i + w] for i in range(0, len(raw), w)]


def _intervals(t: npt.NDArray[np.int64], v: npt.NDArray[np.float64]) -> list[Interval]:
    """(start, end, min, max, mean, count) per clock hour holding readings; NaN values skipped."""
    ok = ~np.isnan(v)
    t, v = t[ok], v[ok]
    if t.size == 0:
        return []
    hour = t // INTERVAL_MS
    starts = np.flatnonzero(np.concatenate(([True], hour[1:] != hour[:-1])))
    mins = np.minimum.reduceat(v, starts)
    maxs = np.maximum.reduceat(v, starts)
    counts = np.diff(np.concatenate((starts, [t.size])))
    means = np.add.reduceat(v, starts) / counts
    ends = np.concatenate((starts[1:] - 1, [t.size - 1]))
    return list(zip(t[starts].tolist(), t[ends].tolist(), np.round(mins, 3).tolist(),
                    np.round(maxs, 3).tolist(), np.round(means, 3).tolist(), counts.tolist(), strict=True))


def _round(x: float) -> float:
    return round(x, 3)


def _report(kind: str, uom: str, lo: float, hi: float, mean: float) -> dict[str, Any]:
    return {"type": kind, "minValue": lo, "maxValue": hi, "meanValue": mean, "uom": uom}


def _logger_event(ev: Evidence, leg: LegEvidence, lg: LoggerEvidence) -> dict[str, Any] | None:
    s, sl = lg.series, lg.listed
    if sl.stop <= sl.start:
        return None
    device = _urn("device", lg.device.device_id)
    t = s.t_ms[sl]
    elements: list[dict[str, Any]] = []
    temps = _intervals(t, s.c[sl].astype(np.float64))
    humid = {row[0] // INTERVAL_MS: row for row in _intervals(t, s.rh[sl].astype(np.float64))}
    stamps = _times(np.array([x for row in temps for x in row[:2]], dtype=np.int64))
    for k, (start, _end, lo, hi, mean, _) in enumerate(temps):
        reports = [_report("Temperature", "CEL", lo, hi, mean)]
        h = humid.get(start // INTERVAL_MS)
        if h is not None:
            reports.append(_report("RelativeHumidity", "P1", h[2], h[3], h[4]))
        elements.append({
            "sensorMetadata": {"startTime": stamps[2 * k], "endTime": stamps[2 * k + 1], "deviceID": device},
            "sensorReport": reports,
        })
    limits = {lim.id: lim for lim in leg.profile.limits}
    for x in leg.excursions:
        if x["device"] != lg.device.device_id or x["kind"] not in _EXCURSION_KINDS:
            continue
        if x["state"] == "withdrawn":  # late data took it back: the readings show no alarm there
            continue
        meta: dict[str, Any] = {"deviceID": device}
        if x["started_at"]:
            meta["startTime"] = x["started_at"]
        if x["ended_at"]:
            meta["endTime"] = x["ended_at"]
        report: dict[str, Any] = {
            "type": "RelativeHumidity" if x["kind"] in _HUMIDITY_KINDS else "Temperature",
            "exception": "ALARM_CONDITION",
            "uom": "P1" if x["kind"] in _HUMIDITY_KINDS else "CEL",
        }
        if x["kind"] == "light":
            report = {"type": "Illuminance", "exception": "ALARM_CONDITION"}
        elif x["kind"] == "shock":
            report = {"type": "Acceleration", "exception": "ALARM_CONDITION", "uom": "MSK"}
            if x["peak_c"] is not None:
                report["maxValue"] = _round(float(x["peak_c"]) * _STANDARD_GRAVITY)
        elif x["peak_c"] is not None:
            limit = limits.get(x["limit"] or "")
            side = "minValue" if limit is not None and limit.side == "low" else "maxValue"
            report[side] = _round(float(x["peak_c"]))
        elements.append({"sensorMetadata": meta, "sensorReport": [report]})
    lots = [(g, lot, q) for g, lot, q in leg.leg.lots]
    if ev.kind == "lot":
        lots = [(g, lot, q) for g, lot, q in lots if (g, lot) == (ev.subject["gtin"], ev.subject["lot"])]
    quantities: list[dict[str, Any]] = []
    for g, lot, q in lots:
        item: dict[str, Any] = {"epcClass": digital_link(g, lot)}
        if q is not None:
            item["quantity"] = q
        quantities.append(item)
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": iso_ms(int(t[-1])),
        "eventTimeZoneOffset": "+00:00",
        "epcList": [],
        "quantityList": quantities,
        "action": "OBSERVE",
        "bizStep": "sensor_reporting",
        "bizTransactionList": [{"bizTransaction": _urn("shipment", leg.leg.shipment_id)}],
        "sensorElementList": elements,
    }
    if not quantities:
        del event["quantityList"]
    if lg.calibration is not None:
        event[f"{NS}:calibration"] = _calibration_extension(lg.calibration)
    return _with_id(event)


def _with_id(event: dict[str, Any]) -> dict[str, Any]:
    body = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    event["eventID"] = f"ni:///sha-256;{hashlib.sha256(body).hexdigest()}?ver=CBV2.0"
    return event


def _ns(doc: dict[str, Any]) -> dict[str, Any]:
    """An extension object with every key in our namespace (JSON-LD drops unmapped keys)."""
    return {f"{NS}:{k}": _ns(v) if isinstance(v, dict) else v for k, v in doc.items()}


def _calibration_extension(cal: dict[str, Any]) -> dict[str, Any]:
    override = cal.get("override")
    return _ns({
        "status": cal["status"],
        "readingsOutOfCalibration": cal["readings_out_of_calibration"],
        "periods": [
            _ns({
                "from": p["from"], "to": p["to"], "readings": p["readings"], "status": p["status"],
                **({} if p["certificate"] is None else {
                    "certificateNumber": p["certificate"]["certificate_number"],
                    "laboratory": p["certificate"]["laboratory"],
                    "performedOn": p["certificate"]["performed_on"],
                    "dueOn": p["certificate"]["due_on"],
                }),
            })
            for p in cal["periods"]
        ],
        **({} if override is None else {"override": {
            "reason": override["reason"], "overriddenBy": override["overridden_by"],
            "overriddenAt": override["overridden_at"],
            "signatureHashes": [x["record_hash"] for x in override["signatures"]],
        }}),
    })


def _disposition_events(ev: Evidence) -> list[dict[str, Any]]:
    """A lot's disposition decisions as ObjectEvents (bizStep `inspecting`, the CBV disposition),
    with the decision, comment and signatures in our namespace."""
    if ev.kind != "lot" or ev.disposition is None:
        return []
    out = []
    for d in ev.disposition["history"]:
        event: dict[str, Any] = {
            "type": "ObjectEvent",
            "eventTime": d["decided_at"],
            "eventTimeZoneOffset": "+00:00",
            "epcList": [],
            "quantityList": [{"epcClass": digital_link(ev.subject["gtin"], ev.subject["lot"])}],
            "action": "OBSERVE",
            "bizStep": "inspecting",
            "disposition": d["cbv_disposition"],
            f"{NS}:disposition": _ns({
                "decision": d["state"],
                "previous": d["previous"] or "pending",
                "comment": d["comment"],
                "decidedBy": d["decided_by"],
                "signatures": [
                    _ns({"signer": x["signer"], "user": x["user"], "meaning": x["meaning"],
                         "signedAt": x["signed_at"], "recordHash": x["record_hash"],
                         "status": x.get("status")})
                    for x in d["signatures"]
                ],
            }),
        }
        out.append(_with_id(event))
    return out


def epcis_document(ev: Evidence) -> dict[str, Any]:
    events = [
        e for leg in ev.legs for lg in leg.loggers if (e := _logger_event(ev, leg, lg)) is not None
    ]
    events += _disposition_events(ev)
    return {
        "@context": [EPCIS_CONTEXT, {NS: NS_URI}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": iso_ms(int(ev.generated_at.timestamp() * 1000)),
        "epcisBody": {"eventList": events},
    }


def epcis_bytes(ev: Evidence) -> bytes:
    return orjson.dumps(epcis_document(ev))
