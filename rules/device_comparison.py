"""The platform's evaluation of a logger file's readings, set beside what the device printed, and
the differences that sampling cannot explain.

Why the two can differ honestly: the device decides on internal 1-minute samples and logs only
every `interval` (5 or 10 minutes); it truncates what it prints to 0.1 °C. So the platform
allows, and never lists as a discrepancy:

* a value (MKT, mean) that the logged series bounds: each logged interval is evaluated once at
  the lower and once at the higher of its two end readings, the device's value (±0.1 °C) must
  fall inside those bounds;
* a maximum (minimum) up to the swing of the logged interval around the device's own time of it
  above (below) the logged one;
* an alarm raised up to one logging interval plus one internal sample apart, and a time beyond a
  limit differing by up to one interval per entry into and exit from the limit.

What the logged series does not cover (a gap, a cut-down file, time before the first reading) is
listed as not compared, never as a discrepancy. Numbers come from rules/mkt.py and
rules/engine.py, the same code the alerts use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from coldchain.alarm_profile import AlarmProfile, Limit
from coldchain.excursion import Excursion
from coldchain.logger_file import DeviceAlarm, LoggerFile
from rules.engine import SensorSeries, evaluate
from rules.mkt import DEFAULT_DELTA_H_OVER_R_K, mean_kinetic_temperature

__all__ = ["Comparison", "compare_with_device", "device_profile"]

GAS_CONSTANT_KJ = 8.314462618e-3  # kJ/(mol·K)
PRINT_RESOLUTION_C = 0.1


@dataclass(frozen=True, slots=True)
class Comparison:
    platform_report: dict[str, Any]
    discrepancies: list[dict[str, Any]]


def _limit_id(a: DeviceAlarm) -> str:
    return f"alarm-{a.number}"


def device_profile(lf: LoggerFile, *, shift_s: int = 0) -> AlarmProfile | None:
    """The device's own alarm configuration as an alarm profile (None when it has no alarms).

    `shift_s` lengthens (or, negative, shortens) every delay: the platform's alarms are judged
    again with the delays moved by the sampling uncertainty, to tell a real difference from one
    that the logging interval explains.
    """
    if not lf.alarms:
        return None
    limits = tuple(
        Limit(
            id=_limit_id(a), side=a.side, threshold_c=a.threshold_c, inclusive=False,
            single_event_delay_s=max(a.delay_s + shift_s, 0) if a.mode == "single" else None,
            cumulative_budget_s=max(a.delay_s + shift_s, 1) if a.mode == "cumulative" else None,
        )
        for a in lf.alarms
    )
    return AlarmProfile(
        id="device-config", version=1, name=f"{lf.model} alarm configuration", limits=limits,
        start_delay_s=lf.start_delay_s,
    )


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _excursion(x: Excursion, under: str) -> dict[str, Any]:
    return {**x.to_dict(), "under": under, "start": _iso(x.start_ms), "raised": _iso(x.raised_ms),
            "end": _iso(x.end_ms)}


class _Series:
    """The logged series with what sampling allows: covered spans, interval bounds."""

    def __init__(self, t: npt.NDArray[np.int64], c: npt.NDArray[np.float64], interval_s: int | None) -> None:
        self.t, self.c = t, c
        steps = np.diff(t)
        median = int(np.median(steps)) if len(steps) else 60_000
        self.interval_ms = int(interval_s * 1000) if interval_s else median
        # A step longer than 1.5 intervals is a gap: nothing is known inside it.
        self.gap_after = np.flatnonzero(steps > 1.5 * self.interval_ms)

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """True when [start, end] lies within the series with no gap inside."""
        t = self.t
        if not len(t) or start_ms < t[0] - self.interval_ms or end_ms > t[-1] + self.interval_ms:
            return False
        lo = int(np.searchsorted(t, start_ms, side="right")) - 1
        hi = int(np.searchsorted(t, end_ms, side="left"))
        return not bool(((self.gap_after >= lo) & (self.gap_after < hi)).any())

    def window(self, start_ms: int, end_ms: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        lo = int(np.searchsorted(self.t, start_ms, side="left"))
        hi = int(np.searchsorted(self.t, end_ms, side="left"))
        return self.t[lo:hi], self.c[lo:hi]

    def swing_at(self, at_ms: int) -> float:
        """How far the temperature moved over the logged interval(s) around a moment."""
        i = int(np.searchsorted(self.t, at_ms))
        lo, hi = max(i - 2, 0), min(i + 2, len(self.t))
        part = self.c[lo:hi]
        return float(part.max() - part.min()) if len(part) else 0.0


def _bounds_mean(t: npt.NDArray[np.int64], c: npt.NDArray[np.float64]) -> tuple[float, float]:
    if len(t) < 2:
        v = float(c[0])
        return v, v
    w = np.diff(t).astype(np.float64)
    lo = np.minimum(c[:-1], c[1:])
    hi = np.maximum(c[:-1], c[1:])
    return float(np.dot(w, lo) / w.sum()), float(np.dot(w, hi) / w.sum())


def _bounds_mkt(t: npt.NDArray[np.int64], c: npt.NDArray[np.float64], dhr: float) -> tuple[float, float]:
    if len(t) < 2:
        v = float(c[0])
        return v, v
    lo = np.minimum(c[:-1], c[1:])
    hi = np.maximum(c[:-1], c[1:])
    end = int(t[-1])
    return (
        mean_kinetic_temperature(t[:-1], lo, delta_h_over_r_k=dhr, end_ms=end),
        mean_kinetic_temperature(t[:-1], hi, delta_h_over_r_k=dhr, end_ms=end),
    )


def _time_beyond(t: npt.NDArray[np.int64], c: npt.NDArray[np.float64], a: DeviceAlarm) -> tuple[int, int]:
    """Sample-and-hold time beyond the alarm's threshold (ms) and how many times it was entered."""
    if len(t) < 2:
        return 0, 0
    beyond = c > a.threshold_c if a.side == "high" else c < a.threshold_c
    held = beyond[:-1]
    entries = int(np.count_nonzero(np.diff(beyond.astype(np.int8)) == 1)) + int(beyond[0])
    return int(np.diff(t)[held].sum()), entries


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def compare_with_device(lf: LoggerFile, *, shipment_profile: AlarmProfile | None = None) -> Comparison:
    """The platform's report on the file's readings and the discrepancies with the device's."""
    res = lf.results
    found: list[dict[str, Any]] = []
    not_compared: list[dict[str, Any]] = []
    if len(lf.times_ms) == 0:
        # A summary-only file (Fridge-tag 2): no series to evaluate; the daily records are shown
        # as the device kept them and nothing is computed from invented readings.
        return Comparison(
            platform_report={
                "source": "none: the file keeps daily summaries only", "readings": 0,
                "mkt_c": None, "min_c": None, "max_c": None, "mean_c": None, "excursions": [],
                "days": [], "not_compared": [{"check": "all", "reason": "no reading series"}],
            },
            discrepancies=[],
        )
    s = _Series(lf.times_ms, lf.celsius, lf.interval_s)
    t, c = s.t, s.c
    tol_t = s.interval_ms + lf.internal_sample_s * 1000
    dhr = (
        res.mkt_delta_h_kj_mol / GAS_CONSTANT_KJ if res.mkt_delta_h_kj_mol else DEFAULT_DELTA_H_OVER_R_K
    )
    mkt = mean_kinetic_temperature(t, c, delta_h_over_r_k=dhr)
    mean = float(c.mean())
    run_start = res.start_ms if res.start_ms is not None else int(t[0])
    run_stop = res.stop_ms if res.stop_ms is not None else int(t[-1])
    whole = s.covers(max(run_start + lf.start_delay_s * 1000, int(t[0])), min(run_stop, int(t[-1])))
    whole = whole and (run_stop - int(t[-1])) <= 2 * s.interval_ms

    def check(name: str, device: float | None, low: float, high: float, subject: str = "run") -> None:
        if device is None:
            return
        if not (low - PRINT_RESOLUTION_C - 1e-9 <= device <= high + PRINT_RESOLUTION_C + 1e-9):
            found.append({
                "check": name, "subject": subject, "device": device,
                "platform": [_r(low), _r(high)],
                "detail": f"the device's {name} {device} lies outside what the logged readings allow "
                          f"({low:.2f}..{high:.2f}, ±{PRINT_RESOLUTION_C} printing)",
            })

    if whole and not res.derived_from_days:
        lo, hi = _bounds_mkt(t, c, dhr)
        check("mkt_c", res.mkt_c, min(lo, mkt), max(hi, mkt))
        lo, hi = _bounds_mean(t, c)
        check("mean_c", res.mean_c, min(lo, mean), max(hi, mean))
    elif res.mkt_c is not None or res.mean_c is not None:
        not_compared.append({"check": "mkt_c/mean_c", "reason": "the readings do not cover the whole run"})
    for name, dev, at, ours, sign in (
        ("max_c", res.max_c, res.max_ms, float(c.max()), 1.0),
        ("min_c", res.min_c, res.min_ms, float(c.min()), -1.0),
    ):
        if dev is None:
            continue
        if at is not None and s.covers(at, at) and whole:
            swing = s.swing_at(at)
            low, high = (ours, ours + swing) if sign > 0 else (ours - swing, ours)
            check(name, dev, low, high)
        else:
            not_compared.append({"check": name, "reason": "the device's time of it is not in the readings"})

    excursions: list[dict[str, Any]] = []
    profile = device_profile(lf)
    own: list[Excursion] = []
    if profile is not None:
        own = evaluate(SensorSeries(t, c), profile).excursions
        excursions += [_excursion(x, "device_config") for x in own]
        margin = 2 * s.interval_ms // 1000
        lenient = device_profile(lf, shift_s=-margin)
        strict = device_profile(lf, shift_s=margin)
        assert lenient is not None and strict is not None
        found += _compare_alarms(
            lf, s, own, tol_t, not_compared,
            lenient=evaluate(SensorSeries(t, c), lenient).excursions,
            strict=evaluate(SensorSeries(t, c), strict).excursions,
        )
    if shipment_profile is not None:
        excursions += [
            _excursion(x, f"shipment_profile:{shipment_profile.id}")
            for x in evaluate(SensorSeries(t, c), shipment_profile).excursions
        ]
    days = _compare_days(lf, s, found, not_compared)
    report = {
        "source": "readings", "readings": len(t), "first": _iso(int(t[0])), "last": _iso(int(t[-1])),
        "interval_s": s.interval_ms // 1000, "mkt_c": _r(mkt), "mkt_delta_h_over_r_k": round(dhr, 2),
        "min_c": _r(float(c.min())), "max_c": _r(float(c.max())), "mean_c": _r(mean),
        "covers_whole_run": whole, "excursions": excursions, "days": days,
        "not_compared": not_compared,
    }
    return Comparison(platform_report=report, discrepancies=found)


def _compare_alarms(
    lf: LoggerFile, s: _Series, own: list[Excursion], tol_ms: int, not_compared: list[dict[str, Any]],
    *, lenient: list[Excursion], strict: list[Excursion],
) -> list[dict[str, Any]]:
    """Device alarms against the platform's excursions under the device's own configuration.

    A device alarm counts as missed only if even the delays shortened by two logging intervals
    find nothing near it; a platform excursion counts as unreported only if it still holds with
    the delays lengthened by two intervals, and the device has no alarm of that limit then (a
    Fridge-tag prints one trigger per limit and day, so a second episode on a day it already
    alarmed is reported).
    """
    found: list[dict[str, Any]] = []
    by_number = {a.number: a for a in lf.alarms}
    matched: set[int] = set()
    zone_ms = lf.zone_offset_s * 1000
    day_alarmed: set[tuple[int, date]] = {
        (int(rec["alarm"]), d.day)
        for d in lf.days
        for rec in d.alarms
        if rec.get("triggered_ms") is not None
    }
    for e in lf.events:
        a = by_number.get(e.alarm)
        if a is None or e.triggered_ms is None:
            continue
        since = e.start_ms if e.start_ms is not None else e.triggered_ms - a.delay_s * 1000
        if not s.covers(since, e.triggered_ms):
            not_compared.append({
                "check": "alarm", "alarm": e.alarm, "triggered": _iso(e.triggered_ms),
                "reason": "the readings do not cover the time before the alarm",
            })
            continue
        near = [
            (i, x) for i, x in enumerate(own)
            if x.limit_id == _limit_id(a) and i not in matched and abs(x.raised_ms - e.triggered_ms) <= tol_ms
        ]
        if not near:
            explained = any(
                x.limit_id == _limit_id(a) and abs(x.raised_ms - e.triggered_ms) <= tol_ms + 2 * s.interval_ms
                for x in lenient
            )
            if not explained:
                found.append({
                    "check": "alarm", "subject": f"alarm {e.alarm} ({a.side} {a.threshold_c} °C)",
                    "device": _iso(e.triggered_ms), "platform": None,
                    "detail": "the device raised this alarm; the logged readings do not meet its "
                              "condition even allowing two logging intervals",
                })
            continue
        trig = e.triggered_ms
        i, x = min(near, key=lambda p: abs(p[1].raised_ms - trig))
        matched.add(i)
        if e.duration_s is not None and (e.end_ms is not None or a.mode == "cumulative"):
            t, c = s.window(since - s.interval_ms, (e.end_ms or int(s.t[-1])) + s.interval_ms)
            _, entries = _time_beyond(t, c, a)
            allowed = (2 * max(entries, 1) + 1) * s.interval_ms / 1000
            if abs(x.duration_s - e.duration_s) > allowed:
                found.append({
                    "check": "alarm_duration", "subject": f"alarm {e.alarm} at {_iso(e.triggered_ms)}",
                    "device": e.duration_s, "platform": x.duration_s,
                    "detail": f"time beyond differs by {abs(x.duration_s - e.duration_s):.0f} s "
                              f"(sampling allows {allowed:.0f} s)",
                })
    device_times = {
        (e.alarm, e.triggered_ms) for e in lf.events if e.triggered_ms is not None
    }
    for x in strict:
        a = next(a for a in lf.alarms if _limit_id(a) == x.limit_id)
        day = datetime.fromtimestamp((x.raised_ms + zone_ms) / 1000, UTC).date()
        if (a.number, day) in day_alarmed:
            continue
        slack = tol_ms + 2 * s.interval_ms
        if any(n == a.number and abs(at - x.raised_ms) <= slack for n, at in device_times):
            continue
        if any(
            e.alarm == a.number and e.triggered_ms is not None and e.triggered_ms <= x.raised_ms
            and (e.end_ms is None or e.end_ms >= x.start_ms) and e.start_ms is not None
            for e in lf.events
        ):
            continue  # inside an alarm the device already reports as going on
        if s.covers(x.start_ms, x.raised_ms):
            found.append({
                "check": "alarm", "subject": f"alarm {a.number} ({a.side} {a.threshold_c} °C)",
                "device": None, "platform": _iso(x.raised_ms),
                "detail": "the logged readings meet this alarm's condition, even with the delay "
                          "two logging intervals longer; the device reports no alarm",
            })
    return found


def _compare_days(
    lf: LoggerFile, s: _Series, found: list[dict[str, Any]], not_compared: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each daily record the readings cover in full: min, max, mean and time beyond each limit."""
    days: list[dict[str, Any]] = []
    zone_ms = lf.zone_offset_s * 1000
    start = lf.results.start_ms
    stop = lf.results.stop_ms
    for d in lf.days:
        day0 = int(datetime(d.day.year, d.day.month, d.day.day, tzinfo=UTC).timestamp() * 1000) - zone_ms
        lo = max(day0, start or day0)
        hi = min(day0 + 86_400_000, stop or day0 + 86_400_000)
        if not s.covers(lo, hi - s.interval_ms):
            not_compared.append(
                {"check": "day", "date": d.day.isoformat(), "reason": "the readings do not cover the day"}
            )
            continue
        t, c = s.window(lo, hi)
        if not len(t):
            continue
        mean_lo, mean_hi = _bounds_mean(t, c)
        ours_alarms: list[dict[str, Any]] = []
        ours: dict[str, Any] = {
            "date": d.day.isoformat(), "min_c": _r(float(c.min())), "max_c": _r(float(c.max())),
            "mean_c": _r(float(c.mean())), "alarms": ours_alarms,
        }
        subject = f"day {d.day.isoformat()}"

        def differ(name: str, device: float | None, low: float, high: float, subject: str = subject) -> None:
            res_c = PRINT_RESOLUTION_C + 1e-9
            if device is not None and not (low - res_c <= device <= high + res_c):
                found.append({"check": f"day_{name}", "subject": subject, "device": device,
                              "platform": [_r(low), _r(high)],
                              "detail": f"the device's daily {name} lies outside what the readings allow"})

        if d.max_ms is not None and t[0] <= d.max_ms <= t[-1]:
            differ("max_c", d.max_c, float(c.max()), float(c.max()) + s.swing_at(d.max_ms))
        if d.min_ms is not None and t[0] <= d.min_ms <= t[-1]:
            differ("min_c", d.min_c, float(c.min()) - s.swing_at(d.min_ms), float(c.min()))
        differ("mean_c", d.mean_c, min(mean_lo, float(c.mean())), max(mean_hi, float(c.mean())))
        by_number = {a.number: a for a in lf.alarms}
        for rec in d.alarms:
            a = by_number.get(int(rec["alarm"]))
            minutes = rec.get("accumulated_min")
            if a is None or minutes is None:
                continue
            tt, cc = s.window(lo, hi + s.interval_ms)
            beyond_ms, entries = _time_beyond(tt, cc, a)
            ours_alarms.append({"alarm": a.number, "accumulated_min": round(beyond_ms / 60_000, 1)})
            allowed_min = (2 * entries + 1) * s.interval_ms / 60_000
            if abs(beyond_ms / 60_000 - minutes) > allowed_min:
                found.append({
                    "check": "day_time_beyond", "subject": f"{subject} alarm {a.number}",
                    "device": minutes, "platform": round(beyond_ms / 60_000, 1),
                    "detail": "accumulated minutes differ by more than sampling allows "
                              f"({allowed_min:.0f} min)",
                })
        days.append(ours)
    return days
