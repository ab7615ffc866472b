"""A lot's temperature figures across every shipment (leg) it travelled in, from the same engine
that raises the alerts, so a report's numbers always equal the alerts'.

Several loggers may ride with one shipment. For each shipment the lot is judged by its worst
logger (the one with the most time outside the labelled range; ties go to the higher MKT), and
the legs are added up: time beyond each limit is the sum over legs, MKT is taken over the worst
loggers' readings of every leg together (each reading weighted by the time it stands for), and
the stability budget is spent by the time outside the labelled range (beyond the innermost high
and low limits of each leg's profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from coldchain.alarm_profile import AlarmProfile
from rules.engine import SensorSeries, evaluate
from rules.mkt import DEFAULT_DELTA_H_OVER_R_K, KELVIN_OFFSET, duration_weights_ms


@dataclass(frozen=True, slots=True)
class LoggerSeries:
    device_id: str
    times_ms: npt.NDArray[np.int64]
    temps_c: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Leg:
    """One shipment the lot travelled in: its profile and its loggers' readings."""

    shipment_id: str
    profile: AlarmProfile
    loggers: tuple[LoggerSeries, ...]


@dataclass(frozen=True, slots=True)
class LotFigures:
    mkt_c: float | None
    time_out_of_range_s: dict[str, float]
    outside_labelled_range_s: float
    stability_budget_s: float | None
    stability_budget_remaining_s: float | None
    worst_logger: dict[str, str] = field(default_factory=dict)  # shipment -> device
    readings: int = 0


def labelled_range(profile: AlarmProfile) -> tuple[str | None, str | None]:
    """Ids of the innermost high and low limits: the edges of the labelled range."""
    highs = [x for x in profile.limits if x.side == "high"]
    lows = [x for x in profile.limits if x.side == "low"]
    high = min(highs, key=lambda x: x.threshold_c).id if highs else None
    low = max(lows, key=lambda x: x.threshold_c).id if lows else None
    return high, low


def _log_mkt_sums(times: npt.NDArray[np.int64], temps: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """(reference, Σ w·exp(x − reference), Σ w) for MKT with x = −ΔH/(R·T)."""
    w = duration_weights_ms(times).astype(np.float64)
    x = -DEFAULT_DELTA_H_OVER_R_K / (temps + KELVIN_OFFSET)
    ref = float(x.max())
    return ref, float(np.dot(w, np.exp(x - ref))), float(w.sum())


def lot_figures(legs: list[Leg], *, stability_budget_s: float | None) -> LotFigures:
    totals: dict[str, float] = {}
    outside = 0.0
    sums: list[tuple[float, float, float]] = []
    worst: dict[str, str] = {}
    readings = 0
    for leg in legs:
        high, low = labelled_range(leg.profile)
        best: tuple[float, float, LoggerSeries, dict[str, float]] | None = None
        for logger in leg.loggers:
            if logger.times_ms.size == 0:
                continue
            readings += int(logger.times_ms.size)
            state = evaluate(SensorSeries(logger.times_ms, logger.temps_c), leg.profile).state
            beyond = {lim.id: state.time_beyond_s(lim.id) for lim in leg.profile.limits}
            spent = sum(beyond[i] for i in (high, low) if i is not None)
            ref, s, total = _log_mkt_sums(logger.times_ms, logger.temps_c)
            mkt = DEFAULT_DELTA_H_OVER_R_K / -(ref + math.log(s / total)) - KELVIN_OFFSET
            if best is None or (spent, mkt) > (best[0], best[1]):
                best = (spent, mkt, logger, beyond)
        if best is None:
            continue
        spent, _, logger, beyond = best
        worst[leg.shipment_id] = logger.device_id
        outside += spent
        for limit_id, seconds in beyond.items():
            totals[limit_id] = totals.get(limit_id, 0.0) + seconds
        sums.append(_log_mkt_sums(logger.times_ms, logger.temps_c))
    mkt_c: float | None = None
    if sums:
        ref = max(r for r, _, _ in sums)
        s = sum(part * math.exp(r - ref) for r, part, _ in sums)
        total = sum(t for _, _, t in sums)
        mkt_c = round(DEFAULT_DELTA_H_OVER_R_K / -(ref + math.log(s / total)) - KELVIN_OFFSET, 3)
    remaining = None if stability_budget_s is None else stability_budget_s - outside
    return LotFigures(
        mkt_c=mkt_c,
        time_out_of_range_s=totals,
        outside_labelled_range_s=outside,
        stability_budget_s=stability_budget_s,
        stability_budget_remaining_s=remaining,
        worst_logger=worst,
        readings=readings,
    )
