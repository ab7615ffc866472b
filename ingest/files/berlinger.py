"""Berlinger (Q-tag AG) text exports: Fridge-tag 2, Fridge-tag 2 L, Fridge-tag UL and Q-tag CLm.

The export is an indented tree of `Key: value` lines (several pairs on a line are separated by
", "), a tab-separated `Data:` table, and a `Cert:`/`Sig:` tail that the device signed. Times are
the device's local clock; `Zone` is its offset from UTC in hours. Fridge-tag alarms are 0 = lower
and 1 = upper limit; Q-tag CLm alarm types are 1/2 single event below/above and 3/4 accumulated
below/above (0 = off), as its read-out document prints them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import numpy as np

from coldchain.logger_file import (
    AlarmMode,
    AlarmSide,
    DeviceAlarm,
    DeviceAlarmEvent,
    DeviceDay,
    DeviceResults,
    LoggerFile,
    LoggerFileError,
)

__all__ = ["looks_like_berlinger", "parse_berlinger"]

MISSING: Final = "--.-"
_PAIR_SPLIT = re.compile(r", (?=[A-Za-z][A-Za-z0-9 ]*:)")
_ROW_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$")
_QTAG_TYPES: Final[dict[int, tuple[AlarmSide, AlarmMode]]] = {
    1: ("low", "single"), 2: ("high", "single"), 3: ("low", "cumulative"), 4: ("high", "cumulative"),
}
_FORMATS: Final = (
    # (pattern on the Device line, format id); the first match wins, so "2 L" comes before "2".
    (re.compile(r"Fridge-tag\s*2\s*L\b", re.I), "fridge-tag-2l"),
    (re.compile(r"Fridge-tag\s*(UL|Ultra\s*Low)\b", re.I), "fridge-tag-ul"),
    (re.compile(r"Fridge-tag\s*2\b", re.I), "fridge-tag-2"),
    (re.compile(r"Q-tag\s*CLm", re.I), "qtag-clm"),
)


@dataclass(slots=True)
class _Node:
    key: str
    value: str
    line: int
    pairs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    # the tab-separated table under Data/Marker: its first line number and its lines
    rows: tuple[int, list[str]] = (0, [])

    def child(self, key: str) -> _Node | None:
        return next((c for c in self.children if c.key == key), None)

    def get(self, key: str) -> str | None:
        """A value of this node's own line or of a direct child's line."""
        if key in self.pairs:
            return self.pairs[key]
        for c in self.children:
            if key in c.pairs:
                return c.pairs[key]
        return None

    def numbered(self) -> list[_Node]:
        return [c for c in self.children if c.key.isdigit()]


def looks_like_berlinger(text: str) -> bool:
    head = text.lstrip("\ufeff").lstrip()[:200]
    return head.startswith("Device:") and bool(re.search(r"Q-tag|Fridge-tag", head, re.I))


def _table_ends(lines: list[str]) -> dict[int, int]:
    """For each line that opens a run of tab-indented lines, the index just past the run (found
    with one pass of C-level string searches rather than a Python test per line)."""
    text = "\n".join(lines)
    ends: dict[int, int] = {}
    for m in re.finditer(r"(?:^\t[^\n]*(?:\n|$))+", text, re.M):
        start = text.count("\n", 0, m.start())
        ends[start] = start + m.group(0).count("\n") + (0 if m.group(0).endswith("\n") else 1)
    return ends


def _tree(lines: list[str]) -> _Node:
    root = _Node("", "", 0, {})
    stack: list[tuple[int, _Node]] = [(-1, root)]
    table: _Node | None = None
    n = 0
    total = len(lines)
    table_end = _table_ends(lines)
    while n < total:
        raw = lines[n]
        n += 1
        if raw.startswith("\t"):
            if table is None:
                raise LoggerFileError("a table row outside a Data or Marker section", line=n)
            end = table_end.get(n - 1, n)
            table.rows = (n, lines[n - 1 : end])
            n = end
            continue
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        text = raw.strip()
        if ":" not in text:
            raise LoggerFileError(f"expected 'Key: value', found {text[:40]!r}", line=n)
        pairs: dict[str, str] = {}
        for part in _PAIR_SPLIT.split(text):
            key, _, value = part.partition(":")
            pairs[key.strip()] = value.strip()
        key = next(iter(pairs))
        node = _Node(key, pairs[key], n, pairs)
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((indent, node))
        table = node if key in ("Data", "Marker") and indent == 0 else None
    return root


class _Reader:
    """Conversions that name the line at fault."""

    def __init__(self, zone_h: float, fahrenheit: bool) -> None:
        self.zone = timedelta(hours=zone_h)
        self.fahrenheit = fahrenheit

    def temp(self, value: str | None, line: int) -> float | None:
        if value is None or value == "" or value == MISSING:
            return None
        try:
            v = float(value)
        except ValueError:
            raise LoggerFileError(f"temperature {value!r} is not a number", line=line) from None
        return round((v - 32.0) * 5.0 / 9.0, 4) if self.fahrenheit else v

    def stamp(self, value: str | None, line: int, *, day: date | None = None) -> int | None:
        """Epoch ms (UTC) of 'YYYY-MM-DD HH:MM', or of 'HH:MM' on `day`."""
        if not value:
            return None
        try:
            if day is not None and len(value) == 5 and value[2] == ":":
                local = datetime(day.year, day.month, day.day, int(value[:2]), int(value[3:]))
            elif len(value) == 16 and value[4] == "-" and value[10] == " " and value[13] == ":":
                local = datetime(int(value[:4]), int(value[5:7]), int(value[8:10]),
                                 int(value[11:13]), int(value[14:16]))
            else:
                raise ValueError(value)
        except ValueError:
            raise LoggerFileError(f"time {value!r} is not 'YYYY-MM-DD HH:MM'", line=line) from None
        return int((local - self.zone).replace(tzinfo=UTC).timestamp() * 1000)

    @staticmethod
    def integer(value: str | None, line: int) -> int | None:
        if value is None or value == "":
            return None
        try:
            return int(float(value))
        except ValueError:
            raise LoggerFileError(f"{value!r} is not a number", line=line) from None


def _require(node: _Node | None, key: str, line: int) -> _Node:
    if node is None:
        raise LoggerFileError(f"the file has no '{key}:' section", line=line)
    return node


_DATA_ROW = re.compile(r"^\t(\d{4}-\d\d-\d\d \d\d:\d\d)\t([^\t\r\n]*)[^\r\n]*$", re.M)


def _series(data: _Node | None, reader: _Reader) -> tuple[np.ndarray, np.ndarray, int]:
    """Times (UTC ms) and °C of the Data table, and how many values it marks missing.

    The rows are matched by one regular expression over the whole table (thousands of rows per
    millisecond); only when a row does not match is the table walked line by line to name it.
    """
    if data is None or not data.rows[1]:
        return np.empty(0, np.int64), np.empty(0, np.float64), 0
    first_line, rows = data.rows
    if rows and rows[0].lstrip("\t").startswith("yyyy"):
        rows = rows[1:]
        first_line += 1
    found = _DATA_ROW.findall("\n".join(rows))
    lines = range(first_line, first_line + len(rows))
    if len(found) != len(rows):
        for n, r in zip(lines, rows, strict=True):
            if _DATA_ROW.match(r) is None:
                raise LoggerFileError("a Data row needs 'YYYY-MM-DD HH:MM<TAB>temperature'", line=n)
    stamps = [f[0] for f in found]
    values = [f[1].strip() for f in found]
    try:
        local = np.array(stamps, dtype="datetime64[m]")
    except ValueError:
        for n, s in zip(lines, stamps, strict=True):
            try:
                np.datetime64(s.replace(" ", "T"), "m")
            except ValueError:
                raise LoggerFileError(f"time {s!r} is not a valid date", line=n) from None
        raise
    t = local.astype(np.int64) * 60_000 - int(reader.zone.total_seconds() * 1000)
    present = np.array([v != MISSING for v in values], dtype=bool)
    kept = [v for v, p in zip(values, present, strict=True) if p]
    try:
        c = np.array(kept, dtype=np.float64)
    except ValueError:
        for n, v in zip(lines, values, strict=True):
            if v != MISSING:
                try:
                    float(v)
                except ValueError:
                    raise LoggerFileError(f"temperature {v!r} is not a number", line=n) from None
        raise
    t = t[present]
    if len(t) > 1:
        bad = np.nonzero(t[1:] <= t[:-1])[0]
        if len(bad):
            n = [ln for ln, p in zip(lines, present, strict=True) if p][int(bad[0]) + 1]
            raise LoggerFileError("Data rows must be in increasing time order", line=n)
    if reader.fahrenheit:
        c = (c - 32.0) * 5.0 / 9.0
    return t, c, int((~present).sum())


def _signature(root: _Node) -> dict[str, str]:
    found: dict[str, str] = {}
    cert = root.child("Cert")
    if cert is not None:
        for c in cert.children:
            for k, v in c.pairs.items():
                found[f"Cert {k}"] = v
    for key in ("Sig Cert", "Sig"):
        node = root.child(key)
        if node is not None:
            found[key] = node.value
    return found


def _flat(node: _Node | None, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if node is None:
        return out
    for c in node.children:
        name = f"{prefix}{c.key}"
        for k, v in c.pairs.items():
            if v:
                out[f"{prefix}{k}" if k != c.key else name] = v
        out.update(_flat(c, f"{name}."))
    return out


def parse_berlinger(text: str) -> LoggerFile:
    """Parse one export. Raises LoggerFileError naming the line for anything it cannot read."""
    lines = text.lstrip("\ufeff").splitlines()
    if not any(line.strip() for line in lines):
        raise LoggerFileError("the file is empty", line=1)
    root = _tree(lines)
    device_line = root.child("Device")
    if device_line is None:
        raise LoggerFileError("not a Berlinger export: no 'Device:' line", line=1)
    model = device_line.value
    fmt = next((f for pattern, f in _FORMATS if pattern.search(model)), None)
    if fmt is None:
        raise LoggerFileError(f"unknown Berlinger device {model!r}", line=device_line.line)
    if root.child("Sig") is None:
        raise LoggerFileError(
            "the file ends before its signature ('Sig:' line): truncated?", line=len(lines)
        )
    conf = _require(root.child("Conf"), "Conf", device_line.line)
    zone = conf.get("Zone")
    unit = conf.get("Temp unit") or "C"
    try:
        reader = _Reader(float(zone) if zone else 0.0, unit.upper().startswith("F"))
    except ValueError:
        raise LoggerFileError(f"Zone {zone!r} is not a number", line=conf.line) from None
    data = root.child("Data")
    t, c, missing = _series(data, reader)
    if fmt == "qtag-clm":
        return _qtag(root, conf, reader, fmt, model, t, c, missing)
    return _fridge_tag(root, conf, reader, fmt, model, t, c, missing)


def _fridge_tag(
    root: _Node, conf: _Node, reader: _Reader, fmt: str, model: str,
    t: np.ndarray, c: np.ndarray, missing: int,
) -> LoggerFile:
    alarms: list[DeviceAlarm] = []
    alarm_conf = conf.child("Alarm")
    for node in alarm_conf.numbered() if alarm_conf else []:
        number = int(node.key)
        threshold = reader.temp(node.get("T AL"), node.line)
        minutes = reader.integer(node.get("t AL"), node.line)
        if threshold is None or minutes is None:
            raise LoggerFileError(f"alarm {number} needs 'T AL' and 't AL'", line=node.line)
        side: AlarmSide = "low" if number == 0 else "high"
        alarms.append(DeviceAlarm(number, side, threshold, minutes * 60, "single"))
    sides = {a.number: a.side for a in alarms}
    hist = _require(root.child("Hist"), "Hist", conf.line)
    days: list[DeviceDay] = []
    for node in hist.numbered():
        raw_day = node.get("Date")
        try:
            day = date.fromisoformat(raw_day or "")
        except ValueError:
            raise LoggerFileError(f"day record {node.key} has no valid 'Date'", line=node.line) from None
        day_alarms: list[dict[str, Any]] = []
        per_day = node.child("Alarm")
        for a in per_day.numbered() if per_day else []:
            acc = reader.integer(a.get("t Acc"), a.line)
            trig = a.get("TS A")
            day_alarms.append({
                "alarm": int(a.key), "side": sides.get(int(a.key)), "accumulated_min": acc,
                "triggered_ms": reader.stamp(trig, a.line, day=day) if trig else None,
                "triggered_local": trig or None,
                "count": reader.integer(a.get("C A"), a.line),
            })
        timeout = node.child("Ext Sensor timeout") or node.child("Int Sensor timeout")
        checked = node.child("Checked")
        checked_at = (
            next(iter(checked.children[0].pairs.values()), None)
            if checked and checked.children else None
        )
        days.append(DeviceDay(
            day=day,
            min_c=reader.temp(node.get("Min T"), node.line),
            min_ms=reader.stamp(node.get("TS Min T"), node.line, day=day),
            max_c=reader.temp(node.get("Max T"), node.line),
            max_ms=reader.stamp(node.get("TS Max T"), node.line, day=day),
            mean_c=reader.temp(node.get("Avrg T"), node.line),
            alarms=tuple(day_alarms),
            sensor_timeout_min=reader.integer(timeout.get("t AccST"), timeout.line) if timeout else None,
            events=reader.integer(node.get("Events"), node.line),
            checked=checked_at,
        ))
    days.sort(key=lambda d: d.day)
    events = _day_events(days, {a.number: a for a in alarms})
    mins = [d.min_c for d in days if d.min_c is not None]
    maxs = [d.max_c for d in days if d.max_c is not None]
    means = [d.mean_c for d in days if d.mean_c is not None]
    lo = min(days, key=lambda d: d.min_c if d.min_c is not None else np.inf) if mins else None
    hi = max(days, key=lambda d: d.max_c if d.max_c is not None else -np.inf) if maxs else None
    results = DeviceResults(
        min_c=lo.min_c if lo else None, min_ms=lo.min_ms if lo else None,
        max_c=hi.max_c if hi else None, max_ms=hi.max_ms if hi else None,
        mean_c=round(float(np.mean(means)), 2) if means else None,
        start_ms=reader.stamp(hist.get("TS Actv"), hist.line),
        stop_ms=reader.stamp(hist.get("TS Report Creation"), hist.line),
        derived_from_days=True,
    )
    interval = reader.integer(conf.get("Logging Interval"), conf.line)
    delay = reader.integer(conf.get("Measurement delay"), conf.line) or 0
    return LoggerFile(
        format=fmt, model=model, serial=conf.get("Serial"), times_ms=t, celsius=c,
        missing=missing, interval_s=interval * 60 if interval else None, start_delay_s=delay * 60,
        zone_offset_s=int(reader.zone.total_seconds()),
        alarms=tuple(alarms), results=results, days=tuple(days), events=tuple(events),
        signature=_signature(root), settings=_flat(conf),
    )


def _day_events(days: list[DeviceDay], alarms: dict[int, DeviceAlarm]) -> list[DeviceAlarmEvent]:
    """The device's alarms from its daily records: an alarm still on at midnight is printed again
    the next day at 00:00, which continues the same event rather than raising a new one."""
    events: list[DeviceAlarmEvent] = []
    open_event: dict[int, int] = {}  # alarm number -> index in events, while it continues
    previous: date | None = None
    for d in days:
        continuing = previous is not None and d.day - previous == timedelta(days=1)
        for a in d.alarms:
            number = int(a["alarm"])
            conf = alarms.get(number)
            trig = a["triggered_ms"]
            if trig is None or conf is None:
                open_event.pop(number, None)
                continue
            midnight = a.get("triggered_local") == "00:00"
            i = open_event.get(number)
            if i is not None and continuing and midnight:
                e = events[i]
                events[i] = DeviceAlarmEvent(
                    alarm=e.alarm, side=e.side, mode=e.mode, triggered_ms=e.triggered_ms,
                    duration_s=(e.duration_s or 0) + 60 * int(a["accumulated_min"] or 0), day=e.day,
                )
                continue
            open_event[number] = len(events)
            events.append(DeviceAlarmEvent(
                alarm=number, side=conf.side, mode=conf.mode, triggered_ms=trig,
                duration_s=60 * int(a["accumulated_min"] or 0), day=d.day,
            ))
        previous = d.day
    return events


def _qtag(
    root: _Node, conf: _Node, reader: _Reader, fmt: str, model: str,
    t: np.ndarray, c: np.ndarray, missing: int,
) -> LoggerFile:
    alarms: list[DeviceAlarm] = []
    alarm_conf = conf.child("Alarm")
    for node in alarm_conf.numbered() if alarm_conf else []:
        kind = reader.integer(node.get("Type"), node.line) or 0
        if kind == 0:
            continue
        if kind not in _QTAG_TYPES:
            raise LoggerFileError(f"alarm {node.key} has an unknown type {kind}", line=node.line)
        threshold = reader.temp(node.get("T AL"), node.line)
        minutes = reader.integer(node.get("t AL"), node.line)
        if threshold is None or minutes is None:
            raise LoggerFileError(f"alarm {node.key} needs 'T AL' and 't AL'", line=node.line)
        side, mode = _QTAG_TYPES[kind]
        alarms.append(DeviceAlarm(int(node.key), side, threshold, minutes * 60, mode))
    by_number = {a.number: a for a in alarms}
    res = _require(root.child("Res"), "Res", conf.line)
    events: list[DeviceAlarmEvent] = []
    res_alarm = res.child("Alarm")
    for node in res_alarm.numbered() if res_alarm else []:
        a = by_number.get(int(node.key))
        if a is None:
            continue
        for ev in node.children:
            p = ev.pairs
            minutes = reader.integer(p.get("t A"), ev.line)
            events.append(DeviceAlarmEvent(
                alarm=a.number, side=a.side, mode=a.mode,
                triggered_ms=reader.stamp(p.get("TS A"), ev.line),
                start_ms=reader.stamp(p.get("TS S"), ev.line),
                end_ms=reader.stamp(p.get("TS E"), ev.line),
                duration_s=minutes * 60 if minutes is not None else None,
                extreme_c=reader.temp(p.get("T M"), ev.line),
            ))
    energy = conf.get("MKT Energy")
    interval = reader.integer(conf.get("Logging Interval"), conf.line)
    results = DeviceResults(
        mkt_c=reader.temp(res.get("MKT"), res.line),
        mkt_delta_h_kj_mol=float(energy) if energy else None,
        min_c=reader.temp(res.get("Min T"), res.line),
        min_ms=reader.stamp(res.get("TS Min T"), res.line),
        max_c=reader.temp(res.get("Max T"), res.line),
        max_ms=reader.stamp(res.get("TS Max T"), res.line),
        mean_c=reader.temp(res.get("Avrg T"), res.line),
        start_ms=reader.stamp(res.get("TS Start"), res.line),
        stop_ms=reader.stamp(res.get("TS Stop"), res.line),
    )
    return LoggerFile(
        format=fmt, model=model, serial=conf.get("Serial"), times_ms=t, celsius=c,
        missing=missing, interval_s=interval * 60 if interval else None,
        start_delay_s=0,  # the series starts after the start delay (TS Start)
        zone_offset_s=int(reader.zone.total_seconds()),
        alarms=tuple(alarms), results=results, events=tuple(events),
        signature=_signature(root), settings=_flat(conf),
    )
