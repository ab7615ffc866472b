"""The evidence as JSON (the record itself) and as CSV (one row per reading), streamed in chunks.

The JSON document is the record: its SHA-256 is the "record hash" printed on the PDF and named
in the bundle's manifest. Readings are written by `evidence.text` a chunk at a time; everything
else goes through orjson, so the document is the same bytes however it is consumed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from evidence import text
from evidence.model import Evidence, LegEvidence, LoggerEvidence
from rules.lot_figures import LoggerFigures
from storage.evidence import SeriesArrays
from storage.readings import FLAG_CLOCK_CORRECTED, FLAG_DOOR_OPEN, FLAG_LATE

CHUNK = 65_536
FORMAT = "coldchain-evidence/1"


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def logger_stats(f: LoggerFigures) -> dict[str, Any]:
    """A logger's figures as the report shows them (all from the rules' one evaluation)."""
    return {
        "readings": f.readings,
        "first": iso_ms(f.first_ms),
        "last": iso_ms(f.last_ms),
        "min_c": f.min_c,
        "max_c": f.max_c,
        "mean_c": f.mean_c,
        "mkt_c": f.mkt_c,
        "delta_h_over_r_k": f.delta_h_over_r_k,
        "time_beyond_s": f.time_beyond_s,
        "outside_labelled_range_s": f.outside_labelled_range_s,
        "freeze_thaw_cycles": f.freeze_thaw_cycles,
        "mkt_windows": {
            name: {"window_s": w.window_s, "max_c": w.max_c, "ending_at": iso_ms(w.ending_ms),
                   "covered": w.covered}
            for name, w in f.mkt_windows.items()
        },
        "engine_excursions": [
            {
                "kind": x.kind.value, "limit": x.limit_id, "tier": x.tier.value,
                "start": iso_ms(x.start_ms), "raised": iso_ms(x.raised_ms),
                "end": None if x.end_ms is None else iso_ms(x.end_ms),
                "resolved": None if x.resolved_ms is None else iso_ms(x.resolved_ms),
                "peak": x.peak_value, "duration_s": x.duration_s,
            }
            for x in f.excursions
        ],
    }


def leg_stats(leg: LegEvidence) -> dict[str, Any] | None:
    """A leg judged as the lot is: extremes over all its loggers, the rest from the worst one."""
    judged = [lg.figures for lg in leg.loggers if lg.figures is not None]
    if not judged:
        return None
    worst = next((f for f in judged if f.device_id == leg.worst_logger), judged[0])
    n = sum(f.readings for f in judged)
    return {
        "loggers": len(judged),
        "readings": n,
        "min_c": min(f.min_c for f in judged),
        "max_c": max(f.max_c for f in judged),
        "mean_c": sum(f.mean_c * f.readings for f in judged) / n,
        "worst_logger": worst.device_id,
        "mkt_c": worst.mkt_c,
        "time_beyond_s": worst.time_beyond_s,
        "outside_labelled_range_s": worst.outside_labelled_range_s,
        "mkt_windows": logger_stats(worst)["mkt_windows"],
    }


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def head_document(ev: Evidence, readings_marker: str) -> dict[str, Any]:
    """The whole record with each logger's readings replaced by a marker string."""
    first_profile = next(iter(ev.profiles.values()), None)
    legs = []
    for i, leg in enumerate(ev.legs):
        row = leg.leg
        devices = []
        for j, lg in enumerate(leg.loggers):
            dev = lg.device
            listed = lg.listed.stop - lg.listed.start
            devices.append({
                "id": dev.device_id,
                "kind": dev.kind,
                "name": dev.name,
                "interval_s": dev.interval_s,
                "from": _when(dev.rode_from),
                "to": _when(dev.rode_to),
                "calibration": dev.last_calibration,
                "calibration_in_force": lg.calibration,
                "stats": None if lg.figures is None else logger_stats(lg.figures),
                "readings_listed": listed,
                "readings": f"{readings_marker}{i}.{j}",
            })
        legs.append({
            "shipment": {
                "id": row.shipment_id,
                "origin": row.origin,
                "destination": row.destination,
                "created_at": _when(row.created_at),
                "profile": f"{leg.profile.id} v{leg.profile.version}",
                "lots": [{"gtin": g, "lot": lot, "quantity": q} for g, lot, q in row.lots],
            },
            "stats": leg_stats(leg),
            "devices": devices,
            "excursions": list(leg.excursions),
        })
    return {
        "format": FORMAT,
        "kind": ev.kind,
        "title": ev.title,
        "subject": ev.subject,
        "generated_at": _when(ev.generated_at),
        "platform_version": ev.platform_version,
        "profile": first_profile,
        "profiles": ev.profiles,
        "figures": ev.figures,
        "legs": legs,
        "signatures": list(ev.signatures),
        "disposition": ev.disposition,
    }


def _times_and_celsius(layout: text.RowLayout, s: SeriesArrays, a: int, b: int, cw: int) -> None:
    """Rows a..b's corrected time, device time (copied when the clocks agree) and °C, as JSON and
    CSV both write them."""
    n = b - a
    t = s.t_ms[a:b]
    text.rfc3339_ms(t, layout.slot("t", n))
    dt = s.device_t_ms[a:b]
    if np.array_equal(dt, t):
        text.copy_rows(layout.slot("d", n), layout.slot("t", n))
    else:
        text.rfc3339_ms(dt, layout.slot("d", n))
    text.copy_rows(layout.slot("c", n), text.decimals(s.c[a:b], cw)[0])


Layouts = dict[tuple[tuple[bytes | tuple[str, int], ...], int], text.RowLayout]


def _layout(layouts: Layouts, parts: list[bytes | tuple[str, int]], capacity: int) -> text.RowLayout:
    """One buffer per row shape and size for a whole document: loggers with the same columns
    reuse it (every slot is rewritten for each chunk), so only the first pays for its constants."""
    key = (tuple(parts), capacity)
    if key not in layouts:
        layouts[key] = text.RowLayout(parts, capacity)
    return layouts[key]


def _json_rows(lg: LoggerEvidence, layouts: Layouts) -> Iterator[bytes]:
    s, sl = lg.series, lg.listed
    if sl.stop <= sl.start:
        return
    rh = s.rh[sl]
    has_rh = bool(np.isfinite(rh).any())
    flags = s.flags[sl]
    has_door = bool((flags & FLAG_DOOR_OPEN).any())
    has_late = bool((flags & FLAG_LATE).any())
    has_fix = bool((flags & FLAG_CLOCK_CORRECTED).any())
    cw = text.decimal_width(s.c[sl])
    rw = text.decimal_width(rh)
    parts: list[bytes | tuple[str, int]] = [
        b',{"t":"', ("t", text.TIME_WIDTH), b'","device_t":"', ("d", text.TIME_WIDTH), b'","c":',
        ("c", cw),
    ]
    if has_rh:
        parts.append(("rh", 6 + rw))
    for name, wanted, width in (("door", has_door, 12), ("late", has_late, 12),
                                ("fix", has_fix, 23)):
        if wanted:
            parts.append((name, width))
    parts.append(b"}")
    layout = _layout(layouts, parts, min(CHUNK, sl.stop - sl.start))
    first = True
    for a in range(sl.start, sl.stop, CHUNK):
        b = min(a + CHUNK, sl.stop)
        n = b - a
        _times_and_celsius(layout, s, a, b, cw)
        f = s.flags[a:b]
        if has_rh:
            block, present = text.decimals(s.rh[a:b], rw)
            layout.slot("rh", n)[:] = text.optional(present, b',"rh":', block)
        if has_door:
            layout.slot("door", n)[:] = text.flag((f & FLAG_DOOR_OPEN) != 0, b',"door":true')
        if has_late:
            layout.slot("late", n)[:] = text.flag((f & FLAG_LATE) != 0, b',"late":true')
        if has_fix:
            layout.slot("fix", n)[:] = text.flag((f & FLAG_CLOCK_CORRECTED) != 0, b',"clock_corrected":true')
        chunk = layout.render(n)
        yield chunk[1:] if first else chunk  # no comma before the first reading
        first = False


def json_chunks(ev: Evidence) -> Iterator[bytes]:
    """The record as JSON, in pieces of at most a chunk of readings each."""
    marker = f"@readings-{secrets.token_hex(8)}-"
    head = orjson.dumps(head_document(ev, marker), option=orjson.OPT_NON_STR_KEYS)
    pos = 0
    layouts: Layouts = {}
    for i, leg in enumerate(ev.legs):
        for j, lg in enumerate(leg.loggers):
            token = f'"{marker}{i}.{j}"'.encode()
            at = head.index(token, pos)
            yield head[pos:at] + b"["
            yield from _json_rows(lg, layouts)
            yield b"]"
            pos = at + len(token)
    yield head[pos:]


CSV_HEADER = (
    b"shipment,device,time_utc,device_time,temperature_c,humidity_pct,door_open,late,clock_corrected\r\n"
)


def _csv_field(value: str) -> bytes:
    if any(ch in value for ch in ',"\r\n') or value != value.strip():
        value = '"' + value.replace('"', '""') + '"'
    return value.encode("utf-8")


def csv_chunks(ev: Evidence) -> Iterator[bytes]:
    """One row per reading (UTF-8, RFC 4180 line ends, RFC 3339 times, both clocks)."""
    yield CSV_HEADER
    flag_bits = (("door", FLAG_DOOR_OPEN), ("late", FLAG_LATE), ("fix", FLAG_CLOCK_CORRECTED))
    layouts: Layouts = {}
    for leg in ev.legs:
        for lg in leg.loggers:
            s, sl = lg.series, lg.listed
            if sl.stop <= sl.start:
                continue
            # Columns a logger never fills are constant text, so no row pays for them.
            has_rh = bool(np.isfinite(s.rh[sl]).any())
            present = {name: bool((s.flags[sl] & bit).any()) for name, bit in flag_bits}
            cw, rw = text.decimal_width(s.c[sl]), text.decimal_width(s.rh[sl])
            parts: list[bytes | tuple[str, int]] = [
                _csv_field(leg.leg.shipment_id) + b"," + _csv_field(lg.device.device_id) + b",",
                ("t", text.TIME_WIDTH), b",", ("d", text.TIME_WIDTH), b",", ("c", cw), b",",
            ]
            parts.append(("rh", rw) if has_rh else b"")
            for name, _ in flag_bits:
                parts += [b",", (name, 1) if present[name] else b"0"]
            parts.append(b"\r\n")
            layout = _layout(layouts, [p for p in parts if p != b""], min(CHUNK, sl.stop - sl.start))
            for a in range(sl.start, sl.stop, CHUNK):
                b = min(a + CHUNK, sl.stop)
                n = b - a
                _times_and_celsius(layout, s, a, b, cw)
                if has_rh:
                    layout.slot("rh", n)[:] = text.decimals(s.rh[a:b], rw)[0]
                f = s.flags[a:b]
                for name, bit in flag_bits:
                    if present[name]:
                        layout.slot(name, n)[:] = text.flag((f & bit) != 0, b"1", b"0")
                yield layout.render(n)


def _csv_line(values: list[Any]) -> bytes:
    return b",".join(_csv_field("" if v is None else str(v)) for v in values) + b"\r\n"


CALIBRATION_HEADER = (
    "shipment,device,from,to,readings,status,certificate_number,laboratory,performed_on,due_on,"
    "override_reason,override_by,override_at,override_signature_hash"
)


def calibration_csv(ev: Evidence) -> bytes | None:
    """One row per logger and calibration period (the bundle's `calibration.csv`); None when no
    logger of the record has a certificate or an override, since every row would say `never`."""
    rows: list[bytes] = []
    known = False
    for leg in ev.legs:
        for lg in leg.loggers:
            cal = lg.calibration
            if cal is None:
                continue
            o = cal.get("override") or {}
            known = known or bool(o) or any(p["certificate"] is not None for p in cal["periods"])
            for p in cal["periods"]:
                c = p["certificate"] or {}
                rows.append(_csv_line([
                    leg.leg.shipment_id, lg.device.device_id, p["from"], p["to"], p["readings"], p["status"],
                    c.get("certificate_number"), c.get("laboratory"), c.get("performed_on"), c.get("due_on"),
                    o.get("reason"), o.get("overridden_by"), o.get("overridden_at"),
                    ";".join(s["record_hash"] for s in o.get("signatures", [])),
                ]))
    if not known:
        return None
    return CALIBRATION_HEADER.encode() + b"\r\n" + b"".join(rows)


DISPOSITION_HEADER = (
    "decision,previous,cbv_disposition,comment,decided_by,decided_at,signer,user,meaning,signed_at,"
    "record_hash,signature_status"
)


def disposition_csv(ev: Evidence) -> bytes | None:
    """A lot's disposition decisions, one row per signature (the bundle's `disposition.csv`);
    None when QA has not decided yet."""
    history = [] if ev.disposition is None else ev.disposition.get("history", [])
    if not history:
        return None
    rows = []
    for d in history:
        for s in d["signatures"] or [{}]:
            rows.append(_csv_line([
                d["state"], d["previous"] or "pending", d["cbv_disposition"], d["comment"], d["decided_by"],
                d["decided_at"], s.get("signer"), s.get("user"), s.get("meaning"), s.get("signed_at"),
                s.get("record_hash"), s.get("status"),
            ]))
    return DISPOSITION_HEADER.encode() + b"\r\n" + b"".join(rows)
