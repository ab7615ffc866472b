"""A lot's temperature figures across every shipment (leg) it travelled in, from the same engine
that raises the alerts, so a report's numbers always equal the alerts'.

Several loggers may ride with one shipment. For each shipment the lot is judged by its worst
logger (the one with the most time outside the labelled range; ties go to the higher MKT), and
the legs are added up: time beyond each limit is the sum over legs, MKT is taken over the worst
loggers' readings of every leg together (each reading weighted by the time it stands for), and
the stability budget is spent by the time outside the labelled range (beyond the innermost high
and low limits of each leg's profile).

`logger_figures` is the one evaluation of one logger on one leg: the lot figures, the lot page
and the evidence reports all read their per-logger numbers from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from coldchain.alarm_profile import AlarmProfile, FreezeThaw
from coldchain.excursion import Excursion
from rules.engine import EngineState, SensorSeries, evaluate
from rules.mkt import DEFAULT_DELTA_H_OVER_R_K, KELVIN_OFFSET, duration_weights_ms, rolling_mkt

# USP <1079.2>: 24 consecutive hours (controlled cold) and 30 consecutive days (room temperature).
MKT_WINDOWS_S: dict[str, int] = {"24h": 86_400, "30d": 30 * 86_400}


@dataclass(frozen=True, slots=True)
class LoggerSeries:
    device_id: str
    times_ms: npt.NDArray[np.int64]
    temps_c: npt.NDArray[np.float64]
    rh_pct: npt.NDArray[np.float64] | None = None
    door_open: npt.NDArray[np.bool_] | None = None
    # (low, high) the limits judge where edge summaries are among the readings (SensorSeries)
    judged: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
    logger_started_ms: int | None = None  # anchors the start delay, as the rules anchored it


@dataclass(frozen=True, slots=True)
class Leg:
    """One shipment the lot travelled in: its profile and its loggers' readings."""

    shipment_id: str
    profile: AlarmProfile
    loggers: tuple[LoggerSeries, ...]


@dataclass(frozen=True, slots=True)
class MktWindow:
    """The highest MKT over any window of this length; over the data present when the series is
    shorter than the window (`covered` false)."""

    window_s: int
    max_c: float
    ending_ms: int
    covered: bool


@dataclass(frozen=True, slots=True)
class LoggerFigures:
    """One logger on one leg, as the engine judged it."""

    device_id: str
    readings: int
    first_ms: int
    last_ms: int
    min_c: float
    max_c: float
    mean_c: float
    mkt_c: float
    delta_h_over_r_k: float
    time_beyond_s: dict[str, float]
    outside_labelled_range_s: float
    mkt_windows: dict[str, MktWindow]
    excursions: tuple[Excursion, ...]
    state: EngineState
    freeze_thaw_cycles: int | None = None  # None when the profile does not count them


@dataclass(frozen=True, slots=True)
class LotFigures:
    mkt_c: float | None
    time_out_of_range_s: dict[str, float]
    outside_labelled_range_s: float
    stability_budget_s: float | None
    stability_budget_remaining_s: float | None
    worst_logger: dict[str, str] = field(default_factory=dict)  # shipment -> device
    readings: int = 0
    # per leg the most any of its loggers saw, summed over legs; None when no leg counts them
    freeze_thaw_cycles: int | None = None
    loggers: dict[tuple[str, str], LoggerFigures] = field(default_factory=dict)  # (shipment, device)


def labelled_range(profile: AlarmProfile) -> tuple[str | None, str | None]:
    """Ids of the innermost high and low limits: the edges of the labelled range."""
    highs = [x for x in profile.limits if x.side == "high"]
    lows = [x for x in profile.limits if x.side == "low"]
    high = min(highs, key=lambda x: x.threshold_c).id if highs else None
    low = max(lows, key=lambda x: x.threshold_c).id if lows else None
    return high, low


def delta_h_over_r(profile: AlarmProfile) -> float:
    """The profile's ΔH/R: its trip MKT limit's, else its first MKT limit's, else 10,000 K."""
    trip = [m for m in profile.mkt_limits if m.window == "trip"]
    chosen = trip or list(profile.mkt_limits)
    return chosen[0].delta_h_over_r_k if chosen else DEFAULT_DELTA_H_OVER_R_K


def _log_mkt_sums(
    times: npt.NDArray[np.int64], temps: npt.NDArray[np.float64], dhr: float
) -> tuple[float, float, float]:
    """(reference, Σ w·exp(x − reference), Σ w) for MKT with x = −ΔH/(R·T)."""
    w = duration_weights_ms(times).astype(np.float64)
    x = -dhr / (temps + KELVIN_OFFSET)
    ref = float(x.max())
    return ref, float(np.dot(w, np.exp(x - ref))), float(w.sum())


def _mkt_of_sums(sums: list[tuple[float, float, float]], dhr: float) -> float:
    ref = max(r for r, _, _ in sums)
    s = sum(part * math.exp(r - ref) for r, part, _ in sums)
    total = sum(t for _, _, t in sums)
    return dhr / -(ref + math.log(s / total)) - KELVIN_OFFSET


def _window(times: npt.NDArray[np.int64], temps: npt.NDArray[np.float64], window_s: int,
            dhr: float, trip_mkt: float) -> MktWindow:
    covered = times.size > 1 and int(times[-1] - times[0]) >= window_s * 1000
    if not covered:
        return MktWindow(window_s, trip_mkt, int(times[-1]), False)
    rolled = rolling_mkt(times, temps, window_s, delta_h_over_r_k=dhr)
    full = np.flatnonzero(times - times[0] >= window_s * 1000)
    best = int(full[np.argmax(rolled[full])])
    return MktWindow(window_s, float(rolled[best]), int(times[best]), True)


def freeze_thaw_cycles(
    times_ms: npt.NDArray[np.int64], temps_c: npt.NDArray[np.float64], rule: FreezeThaw
) -> int:
    """Cycles of freezing then thawing (see `FreezeThaw`). Each reading holds until the next;
    the last run lasts to the last reading, as the engine's runs do."""
    t = np.asarray(times_ms, dtype=np.int64)
    v = np.asarray(temps_c, dtype=np.float64)
    if t.size < 2:
        return 0
    cls = np.where(v < rule.freeze_below_c, 1, np.where(v > rule.thaw_above_c, 2, 0)).astype(np.int8)
    starts = np.flatnonzero(np.concatenate(([True], cls[1:] != cls[:-1])))
    ends_ms = np.concatenate((t[starts[1:]], [t[-1]]))
    duration = ends_ms - t[starts]
    kind = cls[starts]
    frozen = (kind == 1) & (duration >= rule.min_frozen_s * 1000)
    thawed = (kind == 2) & (duration >= rule.min_thawed_s * 1000)
    events = np.where(frozen, 1, np.where(thawed, 2, 0))
    events = events[events != 0]
    if events.size < 2:
        return 0
    return int(np.count_nonzero((events[:-1] == 1) & (events[1:] == 2)))


def logger_figures(logger: LoggerSeries, profile: AlarmProfile) -> LoggerFigures:
    """Evaluate one logger's readings on one leg (door data included) once, and take every
    per-logger figure from that evaluation. The logger must have at least one reading."""
    t, c = logger.times_ms, np.asarray(logger.temps_c, dtype=np.float64)
    judged_low, judged_high = logger.judged if logger.judged is not None else (c, c)
    result = evaluate(
        SensorSeries(
            t, c, logger.rh_pct, logger.door_open, low_c=judged_low, high_c=judged_high
        ),
        profile,
        EngineState(logger_started_ms=logger.logger_started_ms),
    )
    state = result.state
    beyond = {lim.id: state.time_beyond_s(lim.id) for lim in profile.limits}
    high, low = labelled_range(profile)
    dhr = delta_h_over_r(profile)
    mkt = _mkt_of_sums([_log_mkt_sums(t, c, dhr)], dhr)
    return LoggerFigures(
        device_id=logger.device_id,
        readings=int(t.size),
        first_ms=int(t[0]),
        last_ms=int(t[-1]),
        min_c=float(judged_low.min()),  # a summary's extremes, not only its mean
        max_c=float(judged_high.max()),
        mean_c=float(c.mean()),
        mkt_c=mkt,
        delta_h_over_r_k=dhr,
        time_beyond_s=beyond,
        outside_labelled_range_s=sum(beyond[i] for i in (high, low) if i is not None),
        mkt_windows={name: _window(t, c, s, dhr, mkt) for name, s in MKT_WINDOWS_S.items()},
        excursions=tuple(result.excursions),
        state=state,
        freeze_thaw_cycles=None if profile.freeze_thaw is None
        else freeze_thaw_cycles(t, c, profile.freeze_thaw),
    )


def lot_figures(legs: list[Leg], *, stability_budget_s: float | None) -> LotFigures:
    totals: dict[str, float] = {}
    outside = 0.0
    sums: list[tuple[float, float, float]] = []
    dhrs: set[float] = set()
    worst_series: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = []
    worst: dict[str, str] = {}
    per_logger: dict[tuple[str, str], LoggerFigures] = {}
    readings = 0
    cycles: int | None = None
    for leg in legs:
        best: tuple[float, float, LoggerSeries, LoggerFigures] | None = None
        leg_cycles: list[int] = []
        for logger in leg.loggers:
            if logger.times_ms.size == 0:
                continue
            figures = logger_figures(logger, leg.profile)
            per_logger[(leg.shipment_id, logger.device_id)] = figures
            readings += figures.readings
            if figures.freeze_thaw_cycles is not None:
                leg_cycles.append(figures.freeze_thaw_cycles)
            key = (figures.outside_labelled_range_s, figures.mkt_c)
            if best is None or key > (best[0], best[1]):
                best = (key[0], key[1], logger, figures)
        if leg_cycles:
            cycles = (cycles or 0) + max(leg_cycles)
        if best is None:
            continue
        spent, _, logger, figures = best
        worst[leg.shipment_id] = logger.device_id
        outside += spent
        for limit_id, seconds in figures.time_beyond_s.items():
            totals[limit_id] = totals.get(limit_id, 0.0) + seconds
        dhrs.add(figures.delta_h_over_r_k)
        temps = np.asarray(logger.temps_c, np.float64)
        worst_series.append((logger.times_ms, temps))
        sums.append(_log_mkt_sums(logger.times_ms, temps, figures.delta_h_over_r_k))
    mkt_c: float | None = None
    if sums:
        # Legs judged with different ΔH/R cannot share one sum: take the convention for all.
        dhr = next(iter(dhrs)) if len(dhrs) == 1 else DEFAULT_DELTA_H_OVER_R_K
        if len(dhrs) > 1:
            sums = [_log_mkt_sums(t, c, dhr) for t, c in worst_series]
        mkt_c = round(_mkt_of_sums(sums, dhr), 3)
    remaining = None if stability_budget_s is None else stability_budget_s - outside
    return LotFigures(
        mkt_c=mkt_c,
        time_out_of_range_s=totals,
        outside_labelled_range_s=outside,
        stability_budget_s=stability_budget_s,
        stability_budget_remaining_s=remaining,
        worst_logger=worst,
        readings=readings,
        loggers=per_logger,
        freeze_thaw_cycles=cycles,
    )
