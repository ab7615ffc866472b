"""The pure, vectorised excursion engine: one series + an alarm profile + carried state → excursions.

Definitions (docs/alarm-rules.md explains them for QA; tests/test_rules_engine.py checks them
against a plain loop):

* Sample-and-hold. A reading at tᵢ holds until the next reading tᵢ₊₁. "Time beyond a limit" is
  the sum of the intervals [tᵢ, tᵢ₊₁) whose reading is beyond it. The last reading of the series
  so far stands for no time yet; its interval is counted when the next reading arrives.
* Beyond a limit: high side `v > threshold` (`v >= threshold` when inclusive), low side
  `v < threshold` (`v <= threshold` when inclusive). Back inside by the hysteresis ("release
  band"): high `v < threshold − h` (`<=` when exclusive), low `v > threshold + h` (`>=` when
  exclusive); with h = 0 the release band is exactly "not beyond". A reading that is neither
  beyond nor in the release band is marginal.
* Each reading is classed beyond / marginal / release. Readings before the start delay ends,
  and readings beyond a temperature limit while the door has been open for less than the door
  tolerance, are marginal (not counted, and they do not end an episode either).
* A run is a maximal stretch of readings of one class; it lasts from its first reading to the
  first reading of the next run (or to the last reading so far, while it goes on).
* Single event: a beyond-run lasting >= the delay opens an excursion (start = the run's start,
  raised = start + delay) unless one is already open for that limit. The episode ends at the
  first release-run lasting >= the resolve hold (resolved = that run's start + hold); the
  excursion's end is the end of the last beyond-run before it. One excursion per episode.
* Cumulative: the time beyond a limit (or beyond any limit of a budget group) over the whole
  series; raised once, at the instant the total reaches the budget (>=), and never reset.
* Rate of change: a reading is beyond when |Δv/Δt| from the reading before exceeds the limit
  (°C per minute, strictly greater); episodes as for single events with delay 0.
* Humidity: as temperature single events, with the humidity hysteresis; NaN = not measured.
* Handling (door, light, shock), each raising episodes as single events with a hold of 0:
  door open for a run lasting >= `door_open_max_min` minutes (delay = that time); light seen
  outside every allowed daily UTC window (`light_windows`, delay 0); a shock reading above
  `shock_max_g` (delay 0). Door and light readings inside the start delay are marginal.
* MKT: judged at each whole-hour boundary (whole day for 30-day windows) over the window ending
  there, once the series covers the window (see `MktLimit`); exceeded when MKT > max_c; an
  excursion runs from the first boundary exceeding to the first boundary no longer exceeding.

Carried state. `EngineState` holds exactly what the next batch needs (the last reading, each
rule's current run and open episode, cumulative totals, MKT running sums), so that evaluating
batches one after another, with or without a trip through `to_dict`/`from_dict` in between,
gives the same excursions as one pass over the whole series. Each call returns a snapshot of
every excursion that was open at some time during the batch; a caller keeps the latest snapshot
per `Excursion.key`. All durations are integer milliseconds, so cumulative totals are exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from coldchain.alarm_profile import (
    DOOR_LIMIT_ID,
    LIGHT_LIMIT_ID,
    RATE_LIMIT_ID,
    SHOCK_LIMIT_ID,
    AlarmProfile,
    Limit,
    Side,
)
from coldchain.domain import Severity
from coldchain.errors import ValidationError
from coldchain.excursion import Excursion, ExcursionKind
from rules.mkt import KELVIN_OFFSET

__all__ = [
    "EngineResult",
    "EngineState",
    "SensorSeries",
    "evaluate",
    "evaluate_batches",
    "merge_batches",
]

logger = logging.getLogger(__name__)

TimeArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
ClassArray = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

RELEASE, MARGINAL, BEYOND = 0, 1, 2
_REFERENCE_K = 298.15  # exponents for MKT are taken relative to 25 °C to keep them near 1
_STATE_FORMAT = 1


# --- input --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SensorSeries:
    """Readings of one logger: strictly increasing epoch-ms times and °C (optional %RH, door,
    light, shock in g: NaN = not measured).

    `low_c`/`high_c` are what the low and the high limits judge where they differ from `temps_c`:
    an edge summary reading stands for a bucket by its mean, and is judged by its minimum and
    maximum over that bucket (when in the bucket they occurred is unknown, so the whole bucket
    counts at them: the conservative reading). MKT and the rate of change take `temps_c`.
    """

    times_ms: TimeArray
    temps_c: FloatArray
    rh_pct: FloatArray | None = None
    door_open: BoolArray | None = None
    light: BoolArray | None = None
    shock_g: FloatArray | None = None
    low_c: FloatArray | None = None
    high_c: FloatArray | None = None

    def __post_init__(self) -> None:
        t = np.asarray(self.times_ms)
        if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
            raise ValidationError("times_ms must be a 1-D array of integer epoch milliseconds")
        t = t.astype(np.int64, copy=False)
        v = np.asarray(self.temps_c, dtype=np.float64)
        if v.shape != t.shape:
            raise ValidationError("temps_c must have one value per time")
        if t.size > 1 and not bool(np.all(t[1:] > t[:-1])):
            raise ValidationError(
                "times_ms must be strictly increasing; merge late or duplicate readings with "
                "merge_batches and re-evaluate from a checkpoint"
            )
        if t.size and not (float(v.min()) > -KELVIN_OFFSET and math.isfinite(float(v.max()))):
            raise ValidationError("temps_c must be finite and above absolute zero")
        object.__setattr__(self, "times_ms", t)
        object.__setattr__(self, "temps_c", v)
        if self.rh_pct is not None:
            rh = np.asarray(self.rh_pct, dtype=np.float64)
            if rh.shape != t.shape:
                raise ValidationError("rh_pct must have one value per time (NaN = not measured)")
            object.__setattr__(self, "rh_pct", rh)
        if self.door_open is not None:
            door = np.asarray(self.door_open)
            if door.shape != t.shape or door.dtype != np.bool_:
                raise ValidationError("door_open must be a boolean array with one value per time")
            object.__setattr__(self, "door_open", door)
        if self.light is not None:
            light = np.asarray(self.light)
            if light.shape != t.shape or light.dtype != np.bool_:
                raise ValidationError("light must be a boolean array with one value per time")
            object.__setattr__(self, "light", light)
        if self.shock_g is not None:
            shock = np.asarray(self.shock_g, dtype=np.float64)
            if shock.shape != t.shape:
                raise ValidationError("shock_g must have one value per time (NaN = not measured)")
            object.__setattr__(self, "shock_g", shock)
        for name in ("low_c", "high_c"):
            judged = getattr(self, name)
            if judged is not None:
                judged = np.asarray(judged, dtype=np.float64)
                if judged.shape != t.shape or not bool(np.isfinite(judged).all()):
                    raise ValidationError(f"{name} must be finite with one value per time")
                object.__setattr__(self, name, judged)

    def __len__(self) -> int:
        return int(self.times_ms.size)


def merge_batches(batches: Iterable[SensorSeries]) -> SensorSeries:
    """Merge batches that arrived late, out of order or twice into one sorted series.

    Readings are sorted by time; identical duplicates (same time, value, humidity and door) are
    kept once. Two different readings claiming the same instant are refused: which one is true
    is a question for QA, not something to settle silently.
    """
    parts = list(batches)
    if not parts:
        return SensorSeries(np.empty(0, np.int64), np.empty(0))
    t = np.concatenate([p.times_ms for p in parts])
    v = np.concatenate([p.temps_c for p in parts])
    any_rh = any(p.rh_pct is not None for p in parts)
    any_door = any(p.door_open is not None for p in parts)
    rh = (
        np.concatenate([p.rh_pct if p.rh_pct is not None else np.full(len(p), np.nan)
                        for p in parts])
        if any_rh
        else None
    )
    door = (
        np.concatenate([p.door_open if p.door_open is not None else np.zeros(len(p), bool)
                        for p in parts])
        if any_door
        else None
    )
    light = (
        np.concatenate([p.light if p.light is not None else np.zeros(len(p), bool) for p in parts])
        if any(p.light is not None for p in parts)
        else None
    )
    shock = (
        np.concatenate([p.shock_g if p.shock_g is not None else np.full(len(p), np.nan) for p in parts])
        if any(p.shock_g is not None for p in parts)
        else None
    )
    judged = any(p.low_c is not None or p.high_c is not None for p in parts)
    low = np.concatenate([p.temps_c if p.low_c is None else p.low_c for p in parts]) if judged else None
    high = np.concatenate([p.temps_c if p.high_c is None else p.high_c for p in parts]) if judged else None
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    rh = rh[order] if rh is not None else None
    door = door[order] if door is not None else None
    light = light[order] if light is not None else None
    shock = shock[order] if shock is not None else None
    low = low[order] if low is not None else None
    high = high[order] if high is not None else None
    same = t[1:] == t[:-1]
    if same.any():
        agree = v[1:] == v[:-1]
        for column in (rh, shock, low, high):
            if column is not None:
                agree &= (column[1:] == column[:-1]) | (np.isnan(column[1:]) & np.isnan(column[:-1]))
        for flag in (door, light):
            if flag is not None:
                agree &= flag[1:] == flag[:-1]
        clash = same & ~agree
        if clash.any():
            when = int(t[1:][clash][0])
            raise ValidationError(f"two different readings claim the same time {when} ms")
        keep = np.concatenate(([True], ~same))
        t, v = t[keep], v[keep]
        rh = rh[keep] if rh is not None else None
        door = door[keep] if door is not None else None
        light = light[keep] if light is not None else None
        shock = shock[keep] if shock is not None else None
        low = low[keep] if low is not None else None
        high = high[keep] if high is not None else None
    return SensorSeries(t, v, rh, door, light, shock, low, high)


# --- carried state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenEpisode:
    """An excursion still open at the end of the last batch."""

    start_ms: int
    raised_ms: int
    peak: float
    last_beyond_end_ms: int | None  # None while the value is still beyond


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalCarry:
    """One rule's position at the last point seen: its class, current run and open episode."""

    last_ms: int
    last_class: int
    run_start_ms: int
    run_peak: float | None  # extreme value of the current run when it is a beyond-run
    open: OpenEpisode | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterCarry:
    """Cumulative time beyond a limit (or a budget group) since the series started."""

    beyond_ms: int = 0
    first_beyond_ms: int | None = None
    raised_ms: int | None = None
    peak: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MktCarry:
    """Running Σ Δt·exp(ΔH/R·(1/T_ref − 1/T)) up to the last reading, and recent boundaries."""

    sum_before_last: float = 0.0
    boundaries: tuple[tuple[int, float], ...] = ()
    signal: SignalCarry | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineState:
    """Everything the engine needs to continue a series exactly where the last batch ended.

    A fresh state (the default) starts a new series; `logger_started_ms` anchors the start
    delay when the logger started before its first reading (otherwise the first reading does).
    """

    profile_id: str | None = None
    profile_version: int | None = None
    logger_started_ms: int | None = None
    series_start_ms: int | None = None
    last_ms: int | None = None
    last_c: float | None = None
    last_door: bool = False
    door_open_since_ms: int | None = None
    signals: Mapping[str, SignalCarry] = field(default_factory=dict)
    counters: Mapping[str, CounterCarry] = field(default_factory=dict)
    mkt: Mapping[str, MktCarry] = field(default_factory=dict)

    def time_beyond_s(self, limit_or_group_id: str) -> float:
        """Seconds beyond a limit (or budget group) so far; 0 for one never exceeded."""
        counter = self.counters.get(limit_or_group_id)
        return 0.0 if counter is None else counter.beyond_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (floats round-trip exactly through JSON)."""

        def sig(s: SignalCarry | None) -> dict[str, Any] | None:
            if s is None:
                return None
            op = s.open
            return {
                "last_ms": s.last_ms,
                "last_class": s.last_class,
                "run_start_ms": s.run_start_ms,
                "run_peak": s.run_peak,
                "open": None
                if op is None
                else {
                    "start_ms": op.start_ms,
                    "raised_ms": op.raised_ms,
                    "peak": op.peak,
                    "last_beyond_end_ms": op.last_beyond_end_ms,
                },
            }

        return {
            "format": _STATE_FORMAT,
            "profile_id": self.profile_id,
            "profile_version": self.profile_version,
            "logger_started_ms": self.logger_started_ms,
            "series_start_ms": self.series_start_ms,
            "last_ms": self.last_ms,
            "last_c": self.last_c,
            "last_door": self.last_door,
            "door_open_since_ms": self.door_open_since_ms,
            "signals": {k: sig(v) for k, v in self.signals.items()},
            "counters": {
                k: {
                    "beyond_ms": c.beyond_ms,
                    "first_beyond_ms": c.first_beyond_ms,
                    "raised_ms": c.raised_ms,
                    "peak": c.peak,
                }
                for k, c in self.counters.items()
            },
            "mkt": {
                k: {
                    "sum_before_last": m.sum_before_last,
                    "boundaries": [[b, c] for b, c in m.boundaries],
                    "signal": sig(m.signal),
                }
                for k, m in self.mkt.items()
            },
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EngineState:
        """Rebuild a state saved with `to_dict`; refuses other formats."""
        try:
            if raw.get("format") != _STATE_FORMAT:
                raise ValidationError(f"engine state format {raw.get('format')!r} not supported")

            def sig(d: Mapping[str, Any] | None) -> SignalCarry | None:
                if d is None:
                    return None
                op = d["open"]
                return SignalCarry(
                    last_ms=int(d["last_ms"]),
                    last_class=int(d["last_class"]),
                    run_start_ms=int(d["run_start_ms"]),
                    run_peak=None if d["run_peak"] is None else float(d["run_peak"]),
                    open=None if op is None else OpenEpisode(**op),
                )

            signals = {k: sig(v) for k, v in raw["signals"].items()}
            return cls(
                profile_id=raw["profile_id"],
                profile_version=raw["profile_version"],
                logger_started_ms=raw["logger_started_ms"],
                series_start_ms=raw["series_start_ms"],
                last_ms=raw["last_ms"],
                last_c=raw["last_c"],
                last_door=bool(raw["last_door"]),
                door_open_since_ms=raw["door_open_since_ms"],
                signals={k: v for k, v in signals.items() if v is not None},
                counters={k: CounterCarry(**v) for k, v in raw["counters"].items()},
                mkt={
                    k: MktCarry(
                        sum_before_last=float(v["sum_before_last"]),
                        boundaries=tuple((int(b), float(c)) for b, c in v["boundaries"]),
                        signal=sig(v["signal"]),
                    )
                    for k, v in raw["mkt"].items()
                },
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValidationError(f"engine state is malformed: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class EngineResult:
    """Snapshots of the excursions open at some time during the batch, and the new state."""

    excursions: list[Excursion]
    state: EngineState


# --- runs: the one place where sample-and-hold durations are computed ---------------------------


@dataclass(frozen=True, slots=True)
class _Runs:
    """Runs of equal class over the carried last point (if any) followed by the batch.

    Indices are "extended": with a carried point, index 0 is that point and batch index i is
    extended index i + 1.
    """

    cls: ClassArray  # class of each run
    starts: npt.NDArray[np.intp]  # extended index of each run's first point
    ends: npt.NDArray[np.intp]  # extended index one past each run's last point
    start_ms: TimeArray  # run start (the carried run start for a run continuing from before)
    counted_from_ms: TimeArray  # first point of the run within this evaluation
    end_ms: TimeArray  # next run's first point, or the last point while the run goes on
    offset: int  # 1 when a carried point leads the batch, else 0


def _runs(times: TimeArray, cls: ClassArray, carry: SignalCarry | None) -> _Runs:
    off = 0 if carry is None else 1
    n_ext = times.size + off
    change = np.flatnonzero(cls[1:] != cls[:-1]) + (1 + off)
    if carry is not None and int(cls[0]) != carry.last_class:
        change = np.concatenate(([1], change))
    starts = np.concatenate(([0], change)).astype(np.intp)
    ends = np.concatenate((change, [n_ext])).astype(np.intp)

    def time_at(ext: npt.NDArray[np.intp]) -> TimeArray:
        got = times[np.maximum(ext - off, 0)]
        if carry is not None:
            got[ext == 0] = carry.last_ms
        return got

    run_cls = cls[np.maximum(starts - off, 0)]
    if carry is not None:
        run_cls[0] = carry.last_class
    counted = time_at(starts)
    start_ms = counted.copy()
    if carry is not None:
        start_ms[0] = carry.run_start_ms
    end_ms = time_at(np.minimum(ends, n_ext - 1))
    return _Runs(run_cls, starts, ends, start_ms, counted, end_ms, off)


def _run_peaks(values: FloatArray, runs: _Runs, side: Side, carry: SignalCarry | None) -> FloatArray:
    """The extreme value of each beyond-run (max for high, min for low); NaN for other runs."""
    peaks = np.full(runs.cls.size, np.nan)
    beyond = np.flatnonzero(runs.cls == BEYOND)
    if beyond.size == 0:
        return peaks
    a = np.maximum(runs.starts[beyond] - runs.offset, 0)
    b = runs.ends[beyond] - runs.offset
    nonempty = b > a
    if nonempty.any():
        seg_a, seg_b = a[nonempty], b[nonempty]
        idx = np.empty(2 * seg_a.size, dtype=np.intp)
        idx[0::2], idx[1::2] = seg_a, seg_b
        if idx[-1] == values.size:
            idx = idx[:-1]
        ufunc = np.maximum if side == "high" else np.minimum
        peaks[beyond[nonempty]] = ufunc.reduceat(values, idx)[0::2]
    if carry is not None and runs.cls[0] == BEYOND and carry.run_peak is not None:
        peaks[0] = _worse(side, peaks[0], carry.run_peak)
    return peaks


def _worse(side: Side, a: float, b: float | None) -> float:
    """The more extreme of two values (NaN/None = none yet)."""
    if b is None or math.isnan(b):
        return float(a)
    if math.isnan(a):
        return float(b)
    return float(max(a, b) if side == "high" else min(a, b))


def _segment_worst(side: Side, peaks: FloatArray) -> float:
    finite = peaks[~np.isnan(peaks)]
    if finite.size == 0:
        return math.nan
    return float(finite.max() if side == "high" else finite.min())


# --- episodes (single event, rate, humidity, MKT) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Episode:
    start_ms: int
    raised_ms: int
    end_ms: int | None
    resolved_ms: int | None
    peak: float
    last_ms: int


def _episodes(
    times: TimeArray,
    cls: ClassArray,
    values: FloatArray,
    *,
    side: Side,
    carry: SignalCarry | None,
    delay_ms: int,
    hold_ms: int,
    runs: _Runs | None = None,
    peaks: FloatArray | None = None,
) -> tuple[list[_Episode], SignalCarry]:
    """Apply the episode rule to one class series; see the module docstring."""
    if runs is None:
        runs = _runs(times, cls, carry)
    if peaks is None:
        peaks = _run_peaks(values, runs, side, carry)
    duration = runs.end_ms - runs.start_ms
    qualifies = (runs.cls == BEYOND) & (duration >= delay_ms)
    releases = (runs.cls == RELEASE) & (duration >= hold_ms)
    events = np.flatnonzero(qualifies | releases)
    is_q = qualifies[events]
    was_open = carry is not None and carry.open is not None
    before = np.concatenate(([was_open], is_q[:-1])) if events.size else np.zeros(0, bool)
    opens = events[is_q & ~before]
    closes = events[~is_q & before]
    last_beyond = np.maximum.accumulate(np.where(runs.cls == BEYOND, np.arange(runs.cls.size), -1))
    last_ms = int(times[-1])

    episodes: list[_Episode] = []
    # Pair each close with the episode it ends: the carried one first, then the opens in order.
    open_runs: list[int | None] = ([None] if was_open else []) + [int(r) for r in opens]
    for k, start_run in enumerate(open_runs):
        close_run = int(closes[k]) if k < closes.size else None
        first = 0 if start_run is None else start_run
        upto = runs.cls.size if close_run is None else close_run
        peak = _segment_worst(side, peaks[first:upto])
        if start_run is None:
            assert carry is not None and carry.open is not None
            start_ms, raised_ms = carry.open.start_ms, carry.open.raised_ms
            peak = _worse(side, peak, carry.open.peak)
            carried_end = carry.open.last_beyond_end_ms
        else:
            start_ms = int(runs.start_ms[start_run])
            raised_ms = start_ms + delay_ms
            carried_end = None
        if close_run is not None:
            lb = int(last_beyond[close_run - 1]) if close_run > 0 else -1
            end_ms = int(runs.end_ms[lb]) if lb >= first and lb >= 0 else carried_end
            if end_ms is None:  # the episode's last beyond-run ended in an earlier batch
                raise AssertionError("open episode without a recorded end of its beyond-run")
            resolved: int | None = int(runs.start_ms[close_run]) + hold_ms
        else:
            if runs.cls[-1] == BEYOND:
                end_ms = None
            else:
                lb = int(last_beyond[-1])
                end_ms = int(runs.end_ms[lb]) if lb >= first and lb >= 0 else carried_end
            resolved = None
        episodes.append(_Episode(start_ms, raised_ms, end_ms, resolved, peak, last_ms))

    still_open = episodes[-1] if episodes and episodes[-1].resolved_ms is None else None
    new_carry = SignalCarry(
        last_ms=last_ms,
        last_class=int(runs.cls[-1]),
        run_start_ms=int(runs.start_ms[-1]),
        run_peak=float(peaks[-1]) if runs.cls[-1] == BEYOND else None,
        open=None
        if still_open is None
        else OpenEpisode(
            start_ms=still_open.start_ms,
            raised_ms=still_open.raised_ms,
            peak=still_open.peak,
            last_beyond_end_ms=still_open.end_ms,
        ),
    )
    # For a still-open episode `end_ms` is the end of its latest beyond-run (kept for the
    # carry); `_Evaluation.emit` reports no end until the episode is resolved.
    return episodes, new_carry


# --- classification -----------------------------------------------------------------------------


def _classify(
    values: FloatArray, side: Side, threshold: float, inclusive: bool, hysteresis: float
) -> tuple[ClassArray, BoolArray]:
    """Class of each reading for one limit, and the beyond mask."""
    if side == "high":
        beyond = values >= threshold if inclusive else values > threshold
    else:
        beyond = values <= threshold if inclusive else values < threshold
    if hysteresis == 0.0:
        return np.multiply(beyond, 2, dtype=np.int8), beyond
    band = threshold - hysteresis if side == "high" else threshold + hysteresis
    if side == "high":
        release = values < band if inclusive else values <= band
    else:
        release = values > band if inclusive else values >= band
    cls = np.add(beyond, ~release, dtype=np.int8)
    return cls, beyond


# --- the engine ---------------------------------------------------------------------------------


def _signal_key(kind: ExcursionKind, limit_id: str) -> str:
    return f"{kind.value}:{limit_id}"


def _neutralise(cls: ClassArray, mask: BoolArray | slice) -> ClassArray:
    """Turn beyond readings under `mask` into marginal ones (start delay, door tolerance)."""
    sub = cls[mask]
    sub[sub == BEYOND] = MARGINAL
    cls[mask] = sub
    return cls


@dataclass(slots=True)
class _Evaluation:
    """One evaluation (one call of `evaluate` on one series' new readings): the working context
    every rule reads and writes."""

    profile: AlarmProfile
    state: EngineState
    times: TimeArray
    temps: FloatArray
    rh: FloatArray | None
    delay_cut: int  # readings before this index are inside the start delay
    door_excused: BoolArray | None
    temps_low: FloatArray  # what low limits judge: `temps`, or a summary's minimum
    temps_high: FloatArray  # what high limits judge: `temps`, or a summary's maximum
    excursions: list[Excursion] = field(default_factory=list)
    signals: dict[str, SignalCarry] = field(default_factory=dict)
    counters: dict[str, CounterCarry] = field(default_factory=dict)
    mkt: dict[str, MktCarry] = field(default_factory=dict)

    def emit(
        self, *, limit_id: str, tier: Severity, kind: ExcursionKind, episode: _Episode
    ) -> None:
        end = episode.end_ms if episode.resolved_ms is not None else None
        self.excursions.append(
            Excursion(
                profile_id=self.profile.id,
                profile_version=self.profile.version,
                limit_id=limit_id,
                tier=tier,
                kind=kind,
                start_ms=episode.start_ms,
                end_ms=end,
                raised_ms=episode.raised_ms,
                resolved_ms=episode.resolved_ms,
                peak_value=episode.peak,
                duration_s=((end if end is not None else episode.last_ms) - episode.start_ms)
                / 1000.0,
            )
        )

    def signal(
        self,
        *,
        kind: ExcursionKind,
        limit_id: str,
        tier: Severity,
        cls: ClassArray,
        values: FloatArray,
        side: Side,
        delay_ms: int,
        hold_ms: int,
        times: TimeArray | None = None,
        carry: SignalCarry | None = None,
        runs: _Runs | None = None,
        peaks: FloatArray | None = None,
    ) -> SignalCarry:
        key = _signal_key(kind, limit_id)
        if times is None:
            times, carry = self.times, self.state.signals.get(key)
        episodes, new_carry = _episodes(
            times, cls, values, side=side, carry=carry, delay_ms=delay_ms, hold_ms=hold_ms,
            runs=runs, peaks=peaks,
        )
        for episode in episodes:
            self.emit(limit_id=limit_id, tier=tier, kind=kind, episode=episode)
        if kind is not ExcursionKind.MKT:
            self.signals[key] = new_carry
        return new_carry


def _position(runs: _Runs, peaks: FloatArray | None, times: TimeArray) -> SignalCarry:
    """The carry of a class series that raises no episodes of its own (cumulative-only)."""
    beyond_now = runs.cls[-1] == BEYOND and peaks is not None
    return SignalCarry(
        last_ms=int(times[-1]),
        last_class=int(runs.cls[-1]),
        run_start_ms=int(runs.start_ms[-1]),
        run_peak=float(peaks[-1]) if beyond_now and peaks is not None else None,
    )


def _count(
    runs: _Runs,
    peaks: FloatArray | None,
    side: Side,
    carry: CounterCarry,
    budget_ms: int | None,
) -> CounterCarry:
    """Add this batch's time beyond to a cumulative counter; find the instant the budget ran out."""
    beyond = np.flatnonzero(runs.cls == BEYOND)
    if beyond.size == 0:
        return carry
    counted = runs.end_ms[beyond] - runs.counted_from_ms[beyond]
    totals = carry.beyond_ms + np.cumsum(counted)
    raised = carry.raised_ms
    if budget_ms is not None and raised is None and int(totals[-1]) >= budget_ms:
        r = int(np.argmax(totals >= budget_ms))
        already = int(totals[r] - counted[r])
        raised = int(runs.counted_from_ms[beyond[r]]) + (budget_ms - already)
    first = carry.first_beyond_ms
    if first is None:
        first = int(runs.start_ms[beyond[0]])
    peak = carry.peak
    if peaks is not None:
        worst = _segment_worst(side, peaks[beyond])
        peak = None if math.isnan(worst) else _worse(side, worst, carry.peak)
    return CounterCarry(
        beyond_ms=int(totals[-1]), first_beyond_ms=first, raised_ms=raised, peak=peak
    )


def _emit_cumulative(
    batch: _Evaluation, *, limit_id: str, tier: Severity, counter: CounterCarry, peak: float
) -> None:
    if counter.raised_ms is None:
        return
    assert counter.first_beyond_ms is not None
    batch.excursions.append(
        Excursion(
            profile_id=batch.profile.id,
            profile_version=batch.profile.version,
            limit_id=limit_id,
            tier=tier,
            kind=ExcursionKind.CUMULATIVE,
            start_ms=counter.first_beyond_ms,
            end_ms=None,
            raised_ms=counter.raised_ms,
            resolved_ms=None,
            peak_value=peak,
            duration_s=counter.beyond_ms / 1000.0,
        )
    )


def _temperature_limits(batch: _Evaluation) -> None:
    profile = batch.profile
    hyst = profile.hysteresis_c
    hold_ms = profile.resolve_hold_s * 1000
    beyond_masks: dict[str, tuple[ClassArray, Limit]] = {}
    for limit in profile.limits:
        values = batch.temps_high if limit.side == "high" else batch.temps_low
        cls, _ = _classify(values, limit.side, limit.threshold_c, limit.inclusive, hyst)
        if batch.delay_cut:
            _neutralise(cls, slice(0, batch.delay_cut))
        if batch.door_excused is not None:
            _neutralise(cls, batch.door_excused)
        key = _signal_key(ExcursionKind.SINGLE, limit.id)
        carry = batch.state.signals.get(key)
        runs = _runs(batch.times, cls, carry)
        peaks = _run_peaks(values, runs, limit.side, carry)
        if limit.single_event_delay_s is not None:
            batch.signal(
                kind=ExcursionKind.SINGLE, limit_id=limit.id, tier=limit.tier, cls=cls,
                values=values, side=limit.side, delay_ms=limit.single_event_delay_s * 1000,
                hold_ms=hold_ms, carry=carry, times=batch.times, runs=runs, peaks=peaks,
            )
        else:
            batch.signals[key] = _position(runs, peaks, batch.times)
        counter = _count(
            runs, peaks, limit.side, batch.state.counters.get(limit.id, CounterCarry()),
            None if limit.budget_group else _ms(limit.cumulative_budget_s),
        )
        batch.counters[limit.id] = counter
        if limit.budget_group is None and counter.peak is not None:
            _emit_cumulative(
                batch, limit_id=limit.id, tier=limit.tier, counter=counter, peak=counter.peak
            )
        if limit.budget_group is not None:
            beyond_masks[limit.id] = (cls, limit)
    for group, members in profile.budget_groups.items():
        union = np.zeros(batch.times.size, dtype=bool)
        for member in members:
            union |= beyond_masks[member.id][0] == BEYOND
        cls = np.multiply(union, 2, dtype=np.int8)
        key = f"group:{group}"
        carry = batch.state.signals.get(key)
        runs = _runs(batch.times, cls, carry)
        batch.signals[key] = _position(runs, None, batch.times)
        counter = _count(
            runs, None, "high", batch.state.counters.get(group, CounterCarry()),
            _ms(members[0].cumulative_budget_s),
        )
        batch.counters[group] = counter
        # The group's peak is the member reading farthest beyond its own threshold.
        worst, worst_by = -math.inf, math.nan
        for m in members:
            c = batch.counters[m.id]
            if c.peak is None:
                continue
            by = c.peak - m.threshold_c if m.side == "high" else m.threshold_c - c.peak
            if by > worst:
                worst, worst_by = by, c.peak
        _emit_cumulative(batch, limit_id=group, tier=members[0].tier, counter=counter,
                         peak=worst_by)


def _ms(seconds: int | None) -> int | None:
    return None if seconds is None else seconds * 1000


def _rate_of_change(batch: _Evaluation) -> None:
    limit = batch.profile.rate_of_change_c_per_min
    if limit is None:
        return
    t, v, st = batch.times, batch.temps, batch.state
    rate = np.zeros(t.size)
    if t.size > 1:
        rate[1:] = np.abs(np.diff(v)) * 60_000.0 / np.diff(t)
    if st.last_ms is not None and st.last_c is not None:
        rate[0] = abs(v[0] - st.last_c) * 60_000.0 / (t[0] - st.last_ms)
    cls = np.multiply(rate > limit, 2, dtype=np.int8)
    if batch.delay_cut:
        _neutralise(cls, slice(0, batch.delay_cut))
    batch.signal(
        kind=ExcursionKind.RATE, limit_id=RATE_LIMIT_ID, tier=batch.profile.rate_of_change_tier,
        cls=cls, values=rate, side="high", delay_ms=0,
        hold_ms=batch.profile.resolve_hold_s * 1000,
    )


def _humidity(batch: _Evaluation) -> None:
    profile = batch.profile
    if not profile.humidity_limits:
        return
    rh = batch.rh if batch.rh is not None else np.full(batch.times.size, np.nan)
    for limit in profile.humidity_limits:
        cls, _ = _classify(
            rh, limit.side, limit.threshold_pct, limit.inclusive, profile.humidity_hysteresis_pct
        )
        cls[np.isnan(rh)] = MARGINAL
        if batch.delay_cut:
            _neutralise(cls, slice(0, batch.delay_cut))
        batch.signal(
            kind=ExcursionKind.HUMIDITY, limit_id=limit.id, tier=limit.tier, cls=cls,
            values=rh, side=limit.side, delay_ms=limit.delay_s * 1000,
            hold_ms=profile.resolve_hold_s * 1000,
        )


_DAY_MS = 86_400_000


def _handling(batch: _Evaluation, series: SensorSeries) -> None:
    """Door open too long, light outside its windows, shock above its limit (see the header)."""
    profile = batch.profile
    n = batch.times.size
    if profile.door_open_max_min is not None:
        door = series.door_open if series.door_open is not None else np.zeros(n, dtype=bool)
        cls = np.multiply(door, 2, dtype=np.int8)
        if batch.delay_cut:
            _neutralise(cls, slice(0, batch.delay_cut))
        batch.signal(
            kind=ExcursionKind.DOOR, limit_id=DOOR_LIMIT_ID, tier=profile.handling_tier, cls=cls,
            values=batch.temps, side="high", delay_ms=profile.door_open_max_min * 60_000, hold_ms=0,
        )
    if profile.light_windows is not None:
        lit = series.light if series.light is not None else np.zeros(n, dtype=bool)
        minute = (batch.times % _DAY_MS) // 60_000
        allowed = np.zeros(n, dtype=bool)
        for window in profile.light_windows:
            start, end = window.minutes
            if start < end:
                allowed |= (minute >= start) & (minute < end)
            else:  # past midnight
                allowed |= (minute >= start) | (minute < end)
        cls = np.multiply(lit & ~allowed, 2, dtype=np.int8)
        if batch.delay_cut:
            _neutralise(cls, slice(0, batch.delay_cut))
        batch.signal(
            kind=ExcursionKind.LIGHT, limit_id=LIGHT_LIMIT_ID, tier=profile.handling_tier, cls=cls,
            values=batch.temps, side="high", delay_ms=0, hold_ms=0,
        )
    if profile.shock_max_g is not None:
        shock = series.shock_g if series.shock_g is not None else np.full(n, np.nan)
        measured = np.nan_to_num(shock, nan=0.0)
        cls = np.multiply(measured > profile.shock_max_g, 2, dtype=np.int8)
        batch.signal(
            kind=ExcursionKind.SHOCK, limit_id=SHOCK_LIMIT_ID, tier=profile.handling_tier, cls=cls,
            values=measured, side="high", delay_ms=0, hold_ms=0,
        )


def _mkt(batch: _Evaluation) -> None:
    st = batch.state
    t, v = batch.times, batch.temps
    assert st.series_start_ms is not None
    t0 = st.series_start_ms
    has_prev = st.last_ms is not None and st.last_c is not None
    if has_prev:
        assert st.last_ms is not None and st.last_c is not None
        t_ext = np.concatenate(([st.last_ms], t))
        v_ext = np.concatenate(([st.last_c], v))
    else:
        t_ext, v_ext = t, v
    cache: dict[tuple[float, float], tuple[FloatArray, FloatArray]] = {}
    for limit in batch.profile.mkt_limits:
        carry = st.mkt.get(limit.id, MktCarry())
        dhr = limit.delta_h_over_r_k
        key = (dhr, carry.sum_before_last)
        if key not in cache:
            # exp(ΔH/R·(1/T_ref − 1/T)): relative to 25 °C, so values stay near 1 (no overflow).
            e = np.add(v_ext, KELVIN_OFFSET)
            np.divide(-dhr, e, out=e)
            np.add(e, dhr / _REFERENCE_K, out=e)
            np.exp(e, out=e)
            # Sequential running sum continued from the carried total: bit-for-bit the same
            # numbers whatever the batch boundaries (np.cumsum adds strictly left to right).
            cum = np.cumsum(np.concatenate(([carry.sum_before_last], np.diff(t_ext) * e[:-1])))
            cache[key] = (e, cum)
        e, cum = cache[key]
        step = limit.step_s * 1000
        lo = int(t_ext[0]) + (1 if has_prev else 0)
        first_b = -(-lo // step) * step
        bounds = np.arange(first_b, int(t_ext[-1]) + 1, step, dtype=np.int64)
        i = np.searchsorted(t_ext, bounds, side="left") - 1
        exact_start = i < 0  # a boundary at the series' very first reading
        i = np.maximum(i, 0)
        c_at = cum[i] + (bounds - t_ext[i]) * e[i]
        c_at[exact_start] = 0.0
        all_b = np.concatenate((np.array([b for b, _ in carry.boundaries], np.int64), bounds))
        all_c = np.concatenate((np.array([c for _, c in carry.boundaries], np.float64), c_at))
        new_pos = np.arange(len(carry.boundaries), all_b.size)
        window_ms = None if limit.window_s is None else limit.window_s * 1000
        if window_ms is None:
            span = bounds - t0
            judged = span >= max(limit.coverage_s * 1000, 1)
            sums, weights = c_at, span
            keep_ring = 0
        else:
            n_back = window_ms // step
            back = new_pos - n_back
            judged = (bounds - window_ms >= t0) & (back >= 0)
            sums = c_at - all_c[np.maximum(back, 0)]
            weights = np.full(bounds.size, window_ms, dtype=np.int64)
            keep_ring = n_back
        jb = bounds[judged]
        sig_carry = carry.signal
        if jb.size:
            with np.errstate(divide="ignore"):
                mean = np.maximum(sums[judged], np.finfo(np.float64).tiny) / weights[judged]
                mkt_c = dhr / (dhr / _REFERENCE_K - np.log(mean)) - KELVIN_OFFSET
            cls = np.multiply(mkt_c > limit.max_c, 2, dtype=np.int8)
            sig_carry = batch.signal(
                kind=ExcursionKind.MKT, limit_id=limit.id, tier=limit.tier, cls=cls,
                values=mkt_c, side="high", delay_ms=0, hold_ms=0, times=jb, carry=carry.signal,
            )
        tail = max(all_b.size - keep_ring, 0)
        ring = (
            tuple(zip(all_b[tail:].tolist(), all_c[tail:].tolist(), strict=True))
            if keep_ring
            else ()
        )
        batch.mkt[limit.id] = MktCarry(
            sum_before_last=float(cum[-1]), boundaries=ring, signal=sig_carry
        )


def _door_excused(
    series: SensorSeries, state: EngineState, tolerance_ms: int
) -> tuple[BoolArray | None, bool, int | None]:
    """Readings whose door has been open for less than the tolerance; and the door carry."""
    door = series.door_open
    t = series.times_ms
    if door is None:
        return None, False, None
    last_door = bool(door[-1])
    starts = door.copy()
    starts[1:] &= ~door[:-1]
    continuing = state.last_door and bool(door[0])
    if continuing:
        starts[0] = False
    since_idx = np.maximum.accumulate(np.where(starts, np.arange(t.size), -1))
    since = t[np.maximum(since_idx, 0)]
    if continuing:
        assert state.door_open_since_ms is not None
        since = np.where(since_idx < 0, state.door_open_since_ms, since)
    since_last = int(since[-1]) if last_door else None
    if tolerance_ms == 0 or not door.any():
        return None, last_door, since_last
    excused = door & (t - since < tolerance_ms)
    return (excused if excused.any() else None), last_door, since_last


def evaluate(
    series: SensorSeries, profile: AlarmProfile, state: EngineState | None = None
) -> EngineResult:
    """Evaluate one batch of readings (later than everything in `state`) against a profile."""
    state = EngineState() if state is None else state
    if state.profile_id is not None and (state.profile_id, state.profile_version) != (
        profile.id,
        profile.version,
    ):
        raise ValidationError(
            f"engine state belongs to profile {state.profile_id!r} v{state.profile_version}, "
            f"not {profile.id!r} v{profile.version}; start a fresh state for a new profile"
        )
    if len(series) == 0:
        return EngineResult([], state)
    t = series.times_ms
    if state.last_ms is not None and int(t[0]) <= state.last_ms:
        raise ValidationError(
            f"readings at or before {state.last_ms} ms were already evaluated; re-evaluate from "
            "a checkpoint before the earliest late reading (evaluate_batches)"
        )
    series_start = state.series_start_ms if state.series_start_ms is not None else int(t[0])
    state = replace(
        state, profile_id=profile.id, profile_version=profile.version,
        series_start_ms=series_start,
    )
    # A start reported after the first reading belongs to another trip: count from the series.
    started = state.logger_started_ms
    anchor = series_start if started is None else min(started, series_start)
    delay_cut = int(np.searchsorted(t, anchor + profile.start_delay_s * 1000, side="left"))
    excused, last_door, door_since = _door_excused(
        series, state, profile.door_open_tolerance_s * 1000
    )
    batch = _Evaluation(
        profile=profile, state=state, times=t, temps=series.temps_c, rh=series.rh_pct,
        delay_cut=delay_cut, door_excused=excused,
        temps_low=series.temps_c if series.low_c is None else series.low_c,
        temps_high=series.temps_c if series.high_c is None else series.high_c,
    )
    _temperature_limits(batch)
    _rate_of_change(batch)
    _humidity(batch)
    _handling(batch, series)
    if profile.mkt_limits:
        _mkt(batch)
    new_state = replace(
        state,
        last_ms=int(t[-1]),
        last_c=float(series.temps_c[-1]),
        last_door=last_door,
        door_open_since_ms=door_since,
        signals={**state.signals, **batch.signals},
        counters={**state.counters, **batch.counters},
        mkt={**state.mkt, **batch.mkt},
    )
    batch.excursions.sort(key=lambda x: (x.start_ms, x.kind.value, x.limit_id))
    for excursion in batch.excursions:
        if excursion.raised_ms >= int(t[0]) and excursion.is_open:
            logger.debug(
                "excursion open: profile=%s limit=%s kind=%s start_ms=%d",
                profile.id, excursion.limit_id, excursion.kind.value, excursion.start_ms,
            )
    return EngineResult(batch.excursions, new_state)


def evaluate_batches(
    batches: Iterable[SensorSeries],
    profile: AlarmProfile,
    checkpoint: EngineState | None = None,
) -> EngineResult:
    """Re-evaluate late, unordered or repeated batches from a checkpoint state.

    The caller keeps checkpoint states (for example one per hour of data) and, when a reading
    arrives for a time already evaluated, picks the last checkpoint before it and passes every
    reading after that checkpoint here. The batches are merged, sorted and de-duplicated
    (`merge_batches`), then evaluated as one batch, which by construction equals one pass.
    """
    merged = merge_batches(batches)
    if checkpoint is not None and checkpoint.last_ms is not None and len(merged):
        kept = merged.times_ms > checkpoint.last_ms
        if not kept.all():
            raise ValidationError(
                "readings at or before the checkpoint; choose an earlier checkpoint"
            )
    return evaluate(merged, profile, checkpoint)


def fold_excursions(results: Iterable[Iterable[Excursion]]) -> list[Excursion]:
    """The latest snapshot of each excursion across batches, as a store keyed by `key` keeps."""
    latest: dict[tuple[str, str, int], Excursion] = {}
    for excursions in results:
        for x in excursions:
            latest[x.key] = x
    return sorted(latest.values(), key=lambda x: (x.start_ms, x.kind.value, x.limit_id))
