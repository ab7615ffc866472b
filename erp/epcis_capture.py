"""EPCIS 2.0 capture: a partner's document checked whole, then applied in one transaction.

What a document does here (docs/epcis.md):

* An ObjectEvent with bizStep `shipping` or `receiving` is a movement of a shipment: the
  shipment's actual departure (the earliest shipping event) or arrival (the latest receiving
  event) and the location's GLN are recorded; the lots it names by LGTIN (`quantityList`) are put
  on the shipment, and so are the lots of the serialised items it names by SGTIN (`epcList`),
  each found by its serial in the lots' serial lists and counted. The shipment is the one named
  in `bizTransactionList` as `urn:coldchain:shipment:<id>` (the form our own EPCIS export
  writes), or the one an SSCC in `epcList` was linked to before; a named shipment links the
  event's SSCCs to it. An SSCC that belongs to no shipment, a location that is not the
  shipment's origin (shipping) or destination (receiving) GLN, or an unknown shipment refuses
  the document: an ERP integrator fixes the master data and sends the same document again,
  rather than finding shipments invented from events.
* A sensor report with a `value`, a time (its own, its element's, or the event's when the
  element states no interval) and a `deviceID` is a reading of that logger, through the same
  writer as MQTT and logger files: deduplicated by time, linked to the shipment the logger rode
  with, flagged late, queued for the rules. Temperature in CEL, FAH or KEL; RelativeHumidity in
  P1 (percent). Interval statistics (min/max/mean), other measurement types and reports without
  a device (a location's conditions) are kept in the document only. `deviceID` names the logger
  as `urn:coldchain:device:<id>` or by its GIAI (`urn:epc:id:giai:…` or a Digital Link with AI
  8004): the device whose id is that GIAI. A logger not registered in the organization refuses
  the document.
* Every event has a key: its `eventID`, or `ni:///sha-256;<hex>?ver=CBV2.0`, the SHA-256 of the
  event's canonical JSON (keys sorted, no whitespace, `eventID` and `recordTime` left out; the
  same rule our EPCIS export uses for its eventIDs). An event whose key an earlier capture applied
  is skipped, so capturing the same events again stores nothing; the same bytes again are
  recognised by their SHA-256 before anything is read.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
import psycopg

from coldchain.domain import ReadingBatch
from coldchain.epc import parse_epc
from coldchain.gs1 import GS1Error
from evidence.epcis_schema import Problem, cbv_term, document_problems
from ingest.core import Message, Prepared
from ingest.writer import GroupWriter
from storage import epcis as store
from storage import logger_files
from storage import recalls as recall_store

__all__ = [
    "CAPTURE_SEQ_BASE",
    "CaptureRefused",
    "CaptureReport",
    "capture_document",
    "event_key",
]

# Readings of capture N are batch seq CAPTURE_SEQ_BASE - N: below every live sequence (>= 0) and
# every logger file's (-file id), so a capture's batches never collide with theirs.
CAPTURE_SEQ_BASE = -(1 << 40)
SHIPMENT_URN = "urn:coldchain:shipment:"
DEVICE_URN = "urn:coldchain:device:"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_TEMPERATURE = {"CEL": lambda v: v, "FAH": lambda v: (v - 32.0) * 5.0 / 9.0, "KEL": lambda v: v - 273.15}
_MEASURES = {"Temperature": "c", "RelativeHumidity": "rh"}
_MEASURE_STEMS = ("gs1:MT-", "gs1:", "https://gs1.org/voc/MT-", "https://gs1.org/voc/")
_MAX_PROBLEMS = 1000
_MAX_KEY = 2048  # epcis_events.event_key


class CaptureRefused(Exception):
    """The document is refused whole; `problems` lists every reason (nothing was stored)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the EPCIS document")
        self.problems = problems[:_MAX_PROBLEMS]
        self.total = len(problems)


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """What one capture did. `repeated`: the same bytes were captured before (nothing new)."""

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
    devices: list[str] = field(default_factory=list)
    shipments: list[str] = field(default_factory=list)


def event_key(event: dict[str, Any]) -> str:
    """The event's idempotency key: its eventID, or the hash of its canonical JSON."""
    given = event.get("eventID")
    if isinstance(given, str) and given:
        return given
    body = {k: v for k, v in event.items() if k not in ("eventID", "recordTime")}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"ni:///sha-256;{digest}?ver=CBV2.0"


def _time(value: str) -> datetime:
    """An RFC 3339 date-time (already checked by the schema) as an aware datetime."""
    text = value.upper()
    head, dot, tail = text.partition(".")
    if dot:  # Python reads at most 6 fractional digits
        digits = len(tail) - len(tail.lstrip("0123456789"))
        tail = tail[: min(digits, 6)] + tail[digits:]
        text = head + "." + tail
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ms(value: str) -> int:
    return (_time(value) - _EPOCH) // _MS


def _measure(kind: object) -> str | None:
    if not isinstance(kind, str):
        return None
    if kind in _MEASURES:
        return _MEASURES[kind]
    for stem in _MEASURE_STEMS:
        if kind.startswith(stem):
            kind = kind[len(stem) :]
            break
    return _MEASURES.get(kind)


def device_of(uri: str) -> str | None:
    """The device id a sensor's `deviceID` names, None when it names none we can identify."""
    if uri.startswith(DEVICE_URN):
        return unquote(uri[len(DEVICE_URN) :]) or None
    try:
        epc = parse_epc(uri)
    except GS1Error:
        return None
    return epc.giai if epc.kind == "giai" else None


@dataclass(slots=True)
class _Movement:
    position: int
    key: str
    step: str
    at: datetime
    gln: str | None
    ssccs: list[str]
    lots: list[tuple[str, str, int | None]]
    shipment: str | None = None
    # serialised items named by SGTIN in epcList: (position in epcList, GTIN, serial)
    items: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Readings:
    """Readings per device id: time -> [celsius, rh] (None when not reported)."""

    by_device: dict[str, dict[int, list[float | None]]] = field(default_factory=lambda: defaultdict(dict))
    first_path: dict[str, str] = field(default_factory=dict)
    devices: dict[str, str | None] = field(default_factory=dict)  # deviceID URI -> device id


def _problem(out: list[Problem], where: str, message: str) -> None:
    out.append(Problem(where, message))


def _where(i: int, *rest: object) -> str:
    out = f"epcisBody.eventList[{i}]"
    for p in rest:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _sensor_readings(i: int, ev: dict[str, Any], acc: _Readings, problems: list[Problem]) -> None:
    names = acc.devices
    for j, element in enumerate(ev.get("sensorElementList") or ()):
        meta = element.get("sensorMetadata") or {}
        m_time, m_dev = meta.get("time"), meta.get("deviceID")
        interval = "startTime" in meta or "endTime" in meta
        for k, rep in enumerate(element.get("sensorReport") or ()):
            kind = _measure(rep.get("type"))
            value = rep.get("value")
            if kind is None or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            when = rep.get("time") or m_time or (None if interval else ev.get("eventTime"))
            uri = rep.get("deviceID") or m_dev
            if when is None or uri is None:
                continue  # an interval summary, or a location's conditions: kept in the document only
            uom = rep.get("uom")
            if kind == "c":
                convert = _TEMPERATURE.get(uom if isinstance(uom, str) else "")
                if convert is None:
                    where = _where(i, "sensorElementList", j, "sensorReport", k, "uom")
                    _problem(problems, where, f"a Temperature needs uom CEL, FAH or KEL, not {uom!r}")
                    continue
                number = float(convert(float(value)))
            else:
                if uom not in ("P1", None):
                    where = _where(i, "sensorElementList", j, "sensorReport", k, "uom")
                    _problem(problems, where, f"a RelativeHumidity needs uom P1 (percent), not {uom!r}")
                    continue
                number = float(value)
            if uri in names:
                device = names[uri]
            else:
                device = names[uri] = device_of(uri)
            if device is None:
                where = (
                    _where(i, "sensorElementList", j, "sensorReport", k, "deviceID")
                    if rep.get("deviceID")
                    else _where(i, "sensorElementList", j, "sensorMetadata", "deviceID")
                )
                _problem(
                    problems,
                    where,
                    f"deviceID {uri!r} names no logger: use {DEVICE_URN}<id> or"
                    " the logger's GIAI (urn:epc:id:giai:… or a Digital Link with AI 8004)",
                )
                continue
            if device not in acc.first_path:
                acc.first_path[device] = _where(i, "sensorElementList", j, "sensorReport", k)
            slot = acc.by_device[device].setdefault(_ms(when), [None, None])
            column = 0 if kind == "c" else 1
            if slot[column] is None:
                slot[column] = number


def _movement(i: int, key: str, ev: dict[str, Any], step: str, problems: list[Problem]) -> _Movement:
    ssccs: list[str] = []
    items: list[tuple[int, str, str]] = []
    lots: list[tuple[str, str, int | None]] = []
    for j, uri in enumerate(ev.get("epcList") or ()):
        try:
            epc = parse_epc(uri)
        except GS1Error as exc:
            _problem(problems, _where(i, "epcList", j), str(exc))
            continue
        if epc.kind == "sscc" and epc.sscc is not None:
            ssccs.append(epc.sscc)
        elif epc.kind == "sgtin" and epc.gtin is not None and epc.serial is not None:
            items.append((j, epc.gtin, epc.serial))
    for j, q in enumerate(ev.get("quantityList") or ()):
        try:
            epc = parse_epc(q["epcClass"])
        except GS1Error as exc:
            _problem(problems, _where(i, "quantityList", j, "epcClass"), str(exc))
            continue
        if epc.kind == "lgtin" and epc.gtin is not None and epc.lot is not None:
            amount = q.get("quantity")
            whole = (
                int(amount)
                if isinstance(amount, int | float)
                and float(amount).is_integer()
                and q.get("uom") in (None, "EA", "H87")
                else None
            )
            lots.append((epc.gtin, epc.lot, whole))
    named = {
        unquote(b["bizTransaction"][len(SHIPMENT_URN) :])
        for b in ev.get("bizTransactionList") or ()
        if isinstance(b.get("bizTransaction"), str) and b["bizTransaction"].startswith(SHIPMENT_URN)
    }
    if len(named) > 1:
        _problem(
            problems, _where(i, "bizTransactionList"), f"names {len(named)} shipments; one event moves one"
        )
    gln = None
    where = "bizLocation" if "bizLocation" in ev else "readPoint"
    place = ev.get(where)
    if isinstance(place, dict) and isinstance(place.get("id"), str):
        try:
            loc = parse_epc(place["id"])
        except GS1Error as exc:
            _problem(problems, _where(i, where, "id"), str(exc))
        else:
            gln = loc.gln if loc.kind == "sgln" else None
    return _Movement(
        position=i,
        key=key,
        step=step,
        at=_time(ev["eventTime"]),
        gln=gln,
        ssccs=sorted(set(ssccs)),
        lots=lots,
        shipment=next(iter(named)) if len(named) == 1 else None,
        items=items,
    )


def _lots_of_items(conn: psycopg.Connection, org: int, m: _Movement, problems: list[Problem]) -> None:
    """Serialised items (SGTINs) become their lots on the shipment, counted: the lot whose serial
    list (single serials or `A..B` ranges) holds each serial. A serial of no registered lot, or
    of two, refuses the document: the lot's serials are master data to fix, not to guess."""
    by_gtin: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for j, gtin, serial in m.items:
        by_gtin[gtin].append((j, serial))
    counted: dict[tuple[str, str], int] = defaultdict(int)
    for gtin, entries in by_gtin.items():
        serials = sorted({s for _, s in entries})
        found = recall_store.lots_of_serials(conn, org=org, gtin=gtin, serials=serials)
        for j, serial in entries:
            lots = found.get(serial, [])
            if len(lots) != 1:
                why = "no registered lot" if not lots else f"more than one lot ({', '.join(lots)})"
                _problem(
                    problems, _where(m.position, "epcList", j),
                    f"SGTIN {gtin}.{serial}: the serial belongs to {why}; register the lot's serials",
                )
                continue
            counted[(gtin, lots[0])] += 1
    m.lots.extend((gtin, lot, count) for (gtin, lot), count in sorted(counted.items()))


def _resolve(
    conn: psycopg.Connection, org: int, moves: list[_Movement], problems: list[Problem]
) -> dict[str, store.ShipmentLeg]:
    """Find each movement's shipment; problems for unknown SSCCs, shipments and wrong places."""
    all_ssccs = sorted({s for m in moves for s in m.ssccs})
    linked = store.shipments_of_units(conn, org=org, ssccs=all_ssccs)
    legs: dict[str, store.ShipmentLeg] = {}
    for m in moves:
        i = m.position
        named = m.shipment
        if named is not None:
            for s in m.ssccs:
                other = linked.get(s)
                if other is not None and other != named:
                    _problem(
                        problems,
                        _where(i, "epcList"),
                        f"SSCC {s} belongs to shipment {other!r}, not {named!r}",
                    )
                linked.setdefault(s, named)  # later events of the document find it
        else:
            if not m.ssccs:
                _problem(
                    problems,
                    _where(i),
                    f"a {m.step} event needs an SSCC in epcList or the shipment"
                    f" in bizTransactionList ({SHIPMENT_URN}<id>)",
                )
                continue
            unknown = [s for s in m.ssccs if s not in linked]
            for s in unknown:
                _problem(
                    problems,
                    _where(i, "epcList"),
                    f"SSCC {s} belongs to no shipment: name the shipment"
                    f" in bizTransactionList ({SHIPMENT_URN}<id>) when it is first shipped",
                )
            found = {linked[s] for s in m.ssccs if s in linked}
            if len(found) > 1:
                _problem(
                    problems,
                    _where(i, "epcList"),
                    f"the SSCCs belong to different shipments: {sorted(found)}",
                )
            if unknown or len(found) != 1:
                continue
            named = found.pop()
        m.shipment = named
        leg = legs.get(named)
        if leg is None:
            leg = store.shipment_leg(conn, org=org, shipment_id=named)
            if leg is None:
                _problem(problems, _where(i, "bizTransactionList"), f"shipment {named!r} is not registered")
                continue
            legs[named] = leg
        expected = leg.origin_gln if m.step == "shipping" else leg.destination_gln
        if m.gln is not None and expected is not None and m.gln != expected:
            side = "origin" if m.step == "shipping" else "destination"
            _problem(
                problems,
                _where(i, "bizLocation" if m.step == "receiving" else "readPoint"),
                f"{m.step} at GLN {m.gln}, but shipment {named!r} has {side} GLN {expected}",
            )
    return legs


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _load(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CaptureRefused([Problem("(document)", f"not a JSON document: {exc}")]) from None


def capture_document(
    conn: psycopg.Connection,
    raw: bytes,
    *,
    org: int,
    actor: str,
    writer: GroupWriter,
    now_ms: Callable[[], int] = _wall_ms,
) -> CaptureReport:
    """Check and apply one document in the caller's transaction (open one around it: a refusal
    raises CaptureRefused and the caller's rollback leaves nothing stored)."""
    doc = _load(raw)
    problems = document_problems(doc)
    if problems:
        raise CaptureRefused(problems)
    sha = hashlib.sha256(raw).hexdigest()
    store.lock_hash(conn, org=org, sha256=sha)
    kept = store.find_by_hash(conn, org=org, sha256=sha)
    if kept is not None:
        return CaptureReport(
            capture_id=kept.id,
            sha256=sha,
            repeated=True,
            events=kept.events,
            new_events=0,
            duplicate_events=kept.events,
            movements=0,
            readings=kept.readings,
            stored=0,
            duplicates=kept.readings,
            refused=0,
        )
    store.lock_events(conn, org=org)
    events: list[dict[str, Any]] = doc["epcisBody"]["eventList"]
    keys = [event_key(ev) for ev in events]
    for i, k in enumerate(keys):
        if len(k) > _MAX_KEY:
            _problem(problems, _where(i, "eventID"), f"an eventID has at most {_MAX_KEY} characters")
    if problems:
        raise CaptureRefused(problems)
    known = store.known_events(conn, org=org, keys=keys)
    fresh: list[int] = []
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k not in known and k not in seen:
            fresh.append(i)
        seen.add(k)

    moves: list[_Movement] = []
    acc = _Readings()
    for i in fresh:
        ev = events[i]
        if ev.get("type") == "ObjectEvent" and isinstance(ev.get("bizStep"), str):
            step = cbv_term(ev["bizStep"], "bizStep")
            if step in ("shipping", "receiving"):
                moves.append(_movement(i, keys[i], ev, step, problems))
        _sensor_readings(i, ev, acc, problems)
    legs = _resolve(conn, org, moves, problems) if moves else {}
    for m in moves:
        if m.items:
            _lots_of_items(conn, org, m, problems)
    device_keys = store.device_keys(conn, org=org, device_ids=sorted(acc.by_device))
    for device in sorted(set(acc.by_device) - set(device_keys)):
        _problem(
            problems, acc.first_path[device], f"logger {device!r} is not registered in this organization"
        )
    if problems:
        raise CaptureRefused(problems)

    capture_id = store.new_capture_id(conn)
    for m in moves:
        assert m.shipment is not None
        leg = legs[m.shipment]
        if m.ssccs:
            store.link_units(conn, org=org, leg=leg, ssccs=m.ssccs, capture_id=capture_id, actor=actor)
        for gtin, lot, quantity in m.lots:
            store.add_lot_to_shipment(
                conn, org=org, leg=leg, gtin=gtin, lot=lot, quantity=quantity, actor=actor
            )
        legs[m.shipment] = store.record_movement(
            conn,
            org=org,
            leg=leg,
            step=m.step,
            at=m.at,
            gln=m.gln,
            ssccs=m.ssccs,
            capture_id=capture_id,
            event_key=m.key,
            actor=actor,
        )

    readings, stored, duplicates, refused = _write_readings(
        conn, acc, device_keys, capture_id=capture_id, writer=writer, now_ms=now_ms
    )
    store.insert_events(
        conn,
        org=org,
        capture_id=capture_id,
        events=[
            store.EventRow(
                event_key=keys[i],
                position=i,
                type=str(events[i].get("type")),
                biz_step=events[i].get("bizStep"),
                event_time=_time(events[i]["eventTime"]),
            )
            for i in fresh
        ],
    )
    store.insert_capture(
        conn,
        store.CaptureRow(
            id=capture_id,
            org_id=org,
            sha256=sha,
            body=raw,
            events=len(events),
            new_events=len(fresh),
            movements=len(moves),
            readings=readings,
            stored=stored,
            duplicates=duplicates,
            refused=refused,
            captured_by=actor,
        ),
    )
    return CaptureReport(
        capture_id=capture_id,
        sha256=sha,
        repeated=False,
        events=len(events),
        new_events=len(fresh),
        duplicate_events=len(events) - len(fresh),
        movements=len(moves),
        readings=readings,
        stored=stored,
        duplicates=duplicates,
        refused=refused,
        devices=sorted(acc.by_device),
        shipments=sorted(legs),
    )


def _write_readings(
    conn: psycopg.Connection,
    acc: _Readings,
    device_keys: dict[str, int],
    *,
    capture_id: int,
    writer: GroupWriter,
    now_ms: Callable[[], int],
) -> tuple[int, int, int, int]:
    """One batch per logger through the ingest writer; times already stored are left out first,
    under the device row lock (taken in key order). Returns readings, stored, duplicates, refused."""
    received = now_ms()
    message = Message(topic=f"epcis-captures/{capture_id}", payload=b"", received_ms=received)
    group: list[Prepared] = []
    restore: list[tuple[int, int | None, int | None, datetime | None]] = []
    readings = duplicates = 0
    for device in sorted(acc.by_device, key=lambda d: device_keys[d]):
        points = acc.by_device[device]
        t = np.fromiter(points, dtype=np.int64, count=len(points))
        values = np.array(
            [[np.nan if c is None else c, np.nan if h is None else h] for c, h in points.values()],
            dtype=np.float64,
        ).reshape(-1, 2)
        has_c = ~np.isnan(values[:, 0])  # humidity without a temperature at that time is no reading
        t, values = t[has_c], values[has_c]
        if not len(t):
            continue
        order = np.argsort(t, kind="stable")
        t, values = t[order], values[order]
        readings += len(t)
        key = device_keys[device]
        last_seq, offset, seen_at = logger_files.claim_device(conn, key)
        before = logger_files.stored_times(conn, key, from_ms=int(t[0]), to_ms=int(t[-1]))
        fresh = ~np.isin(t, before) if len(before) else np.ones(len(t), dtype=bool)
        duplicates += int((~fresh).sum())
        if not fresh.any():
            continue
        group.append(
            Prepared(
                message,
                ReadingBatch(
                    device=device,
                    seq=CAPTURE_SEQ_BASE - capture_id,
                    sent_ms=received,
                    t_ms=t[fresh],
                    celsius=values[fresh, 0],
                    rh=values[fresh, 1],
                ),
            )
        )
        restore.append((key, last_seq, offset, seen_at))
    if not group:
        return readings, 0, duplicates, 0
    result = writer.write(conn, group)
    for key, last_seq, offset, seen_at in restore:
        # A capture is not live contact: the device's own sequence and last-seen time stay.
        logger_files.restore_device_state(
            conn, key, last_seq=last_seq, clock_offset_ms=offset, last_seen_at=seen_at
        )
    new = sum(len(p.outcome.t_ms) for p in group if isinstance(p.outcome, ReadingBatch))
    return readings, result.readings, duplicates, new - result.readings
