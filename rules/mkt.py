"""Mean kinetic temperature: one-pass, incremental (mergeable accumulator) and rolling windows.

    T_mk = (ΔH/R) / −ln( Σ wᵢ·exp(−ΔH/(R·Tᵢ)) / Σ wᵢ )     (USP <1160>, temperatures in kelvin)

Weighting (the choice every function here shares): each reading stands for the time until the
next reading (sample-and-hold), so uneven intervals and gaps weigh by duration. The last reading
stands for `end_ms − tₗₐₛₜ` when an end time is given, otherwise for the interval just before it
(the logger is assumed to keep its cadence). The previous-interval rule, rather than a median,
is what lets the accumulator below reproduce a one-pass result batch by batch. A single reading
has MKT equal to its own temperature.

Numerical stability: exponents are shifted by a reference (the largest exponent seen) before
`exp`, as in log-sum-exp, so neither overflow nor underflow can occur for physical temperatures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from coldchain.errors import ValidationError

__all__ = [
    "DEFAULT_DELTA_H_OVER_R_K",
    "KELVIN_OFFSET",
    "MktAccumulator",
    "duration_weights_ms",
    "mean_kinetic_temperature",
    "mkt_of_log_means",
    "rolling_mkt",
]

KELVIN_OFFSET = 273.15
DEFAULT_DELTA_H_OVER_R_K = 10_000.0

TimeArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _as_series(times_ms: object, temps_c: object) -> tuple[TimeArray, FloatArray]:
    t = np.asarray(times_ms)
    v = np.asarray(temps_c, dtype=np.float64)
    if t.ndim != 1 or v.shape != t.shape:
        raise ValidationError("times and temperatures must be 1-D arrays of equal length")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ValidationError("times must be integer epoch milliseconds")
    t = t.astype(np.int64, copy=False)
    if t.size > 1 and not bool(np.all(t[1:] > t[:-1])):
        raise ValidationError("times must be strictly increasing")
    if v.size and not (float(v.min()) > -KELVIN_OFFSET and math.isfinite(float(v.max()))):
        raise ValidationError("temperatures must be finite and above absolute zero")
    return t, v


def _check_dhr(delta_h_over_r_k: float) -> float:
    if not (math.isfinite(delta_h_over_r_k) and delta_h_over_r_k > 0):
        raise ValidationError(f"ΔH/R must be a positive number of kelvin, got {delta_h_over_r_k!r}")
    return float(delta_h_over_r_k)


def _exponents(temps_c: FloatArray, delta_h_over_r_k: float) -> FloatArray:
    """−ΔH/(R·T) for each reading."""
    x: FloatArray = np.add(temps_c, KELVIN_OFFSET)
    np.divide(-delta_h_over_r_k, x, out=x)
    return x


def _mkt_from_log_mean(log_mean: float | FloatArray, delta_h_over_r_k: float) -> Any:
    """MKT in °C from ln(weighted mean of exp(−ΔH/RT))."""
    return -delta_h_over_r_k / log_mean - KELVIN_OFFSET


def duration_weights_ms(times_ms: object, *, end_ms: int | None = None) -> TimeArray:
    """The time each reading stands for, in ms (see the module docstring for the last one)."""
    t = np.asarray(times_ms, dtype=np.int64)
    w = np.empty_like(t)
    if t.size == 0:
        return w
    w[:-1] = np.diff(t)
    if end_ms is not None:
        if end_ms < t[-1]:
            raise ValidationError("end_ms must not be before the last reading")
        w[-1] = end_ms - t[-1]
    else:
        w[-1] = w[-2] if t.size > 1 else 1
    return w


def mean_kinetic_temperature(
    times_ms: object,
    temps_c: object,
    *,
    delta_h_over_r_k: float = DEFAULT_DELTA_H_OVER_R_K,
    end_ms: int | None = None,
) -> float:
    """MKT (°C) of a series, each reading weighted by the time it stands for."""
    dhr = _check_dhr(delta_h_over_r_k)
    t, v = _as_series(times_ms, temps_c)
    if t.size == 0:
        raise ValidationError("MKT needs at least one reading")
    w = duration_weights_ms(t, end_ms=end_ms)
    total = int(w.sum())
    if total <= 0:  # one reading whose end time equals its own time: MKT is that reading
        return float(v[-1])
    x = _exponents(v, dhr)
    ref = float(x.max())
    np.subtract(x, ref, out=x)
    np.exp(x, out=x)
    s = float(np.dot(w.astype(np.float64), x))
    return float(_mkt_from_log_mean(ref + math.log(s / total), dhr))


def rolling_mkt(
    times_ms: object,
    temps_c: object,
    window_s: int,
    *,
    delta_h_over_r_k: float = DEFAULT_DELTA_H_OVER_R_K,
) -> FloatArray:
    """MKT (°C) over the window [tₖ − window, tₖ) ending at each reading's time.

    Sample-and-hold: the reading holding at the window's start is counted from the start on.
    Where the series does not yet cover a whole window the value is over the data present; the
    first element is NaN (no time has passed).
    """
    dhr = _check_dhr(delta_h_over_r_k)
    if window_s <= 0:
        raise ValidationError("window_s must be > 0")
    t, v = _as_series(times_ms, temps_c)
    out = np.full(t.size, np.nan)
    if t.size < 2:
        return out
    x = _exponents(v, dhr)
    ref = float(x.max())
    e = np.exp(x - ref)
    dt = np.diff(t)
    cum = np.empty(t.size)
    cum[0] = 0.0
    np.cumsum(dt * e[:-1], out=cum[1:])
    window_ms = window_s * 1000
    starts = t - window_ms
    partial = starts <= t[0]
    j = np.searchsorted(t, starts, side="right") - 1
    j = np.maximum(j, 0)
    head = cum[j] + (starts - t[j]) * e[j]
    sums = np.where(partial, cum, cum - head)
    weights = np.where(partial, t - t[0], window_ms).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mean = ref + np.log(np.maximum(sums, np.finfo(np.float64).tiny) / weights)
        out[1:] = _mkt_from_log_mean(log_mean[1:], dhr)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MktAccumulator:
    """MKT over a series fed batch by batch; equals `mean_kinetic_temperature` of the whole.

    `sum_w_ms` and `sum_w_exp` cover every completed interval (reading i until reading i+1);
    the last reading is pending until the next batch, `merge` or `mkt_c(end_ms=...)`.
    `sum_w_exp` is Σ w·exp(x − reference); the reference only keeps numbers in range.
    """

    delta_h_over_r_k: float = DEFAULT_DELTA_H_OVER_R_K
    reference: float | None = None
    sum_w_ms: int = 0
    sum_w_exp: float = 0.0
    first_ms: int | None = None
    last_ms: int | None = None
    last_c: float | None = None
    last_interval_ms: int | None = None

    def __post_init__(self) -> None:
        _check_dhr(self.delta_h_over_r_k)
        if (self.first_ms is None) != (self.last_ms is None) or (self.last_ms is None) != (
            self.last_c is None
        ):
            raise ValidationError("MKT accumulator: first_ms, last_ms and last_c go together")

    @property
    def is_empty(self) -> bool:
        return self.last_ms is None

    def _rescaled(self, reference: float) -> float:
        if self.reference is None or self.sum_w_exp == 0.0:
            return self.sum_w_exp
        return self.sum_w_exp * math.exp(self.reference - reference)

    def extend(self, times_ms: object, temps_c: object) -> MktAccumulator:
        """A new accumulator that also covers these readings (all later than the last one)."""
        t, v = _as_series(times_ms, temps_c)
        if t.size == 0:
            return self
        if self.last_ms is not None:
            if t[0] <= self.last_ms:
                raise ValidationError("MKT accumulator: readings must be later than the last one")
            assert self.last_c is not None
            t = np.concatenate(([self.last_ms], t))
            v = np.concatenate(([self.last_c], v))
        x = _exponents(v, self.delta_h_over_r_k)
        ref = float(x.max())
        if self.reference is not None:
            ref = max(ref, self.reference)
        dt = np.diff(t)
        added = float(np.dot(dt.astype(np.float64), np.exp(x[:-1] - ref))) if dt.size else 0.0
        last_interval = int(dt[-1]) if dt.size else self.last_interval_ms
        return replace(
            self,
            reference=ref,
            sum_w_ms=self.sum_w_ms + int(dt.sum()),
            sum_w_exp=self._rescaled(ref) + added,
            first_ms=int(t[0]) if self.first_ms is None else self.first_ms,
            last_ms=int(t[-1]),
            last_c=float(v[-1]),
            last_interval_ms=last_interval,
        )

    def merge(self, later: MktAccumulator) -> MktAccumulator:
        """Join with the accumulator of the series right after this one."""
        if later.delta_h_over_r_k != self.delta_h_over_r_k:
            raise ValidationError("MKT accumulators with different ΔH/R cannot be merged")
        if self.is_empty:
            return later
        if later.is_empty:
            return self
        assert self.last_ms is not None and self.last_c is not None
        assert later.first_ms is not None
        if later.first_ms <= self.last_ms:
            raise ValidationError("MKT accumulator: the later series must start after this one")
        gap = later.first_ms - self.last_ms
        gap_x = -self.delta_h_over_r_k / (self.last_c + KELVIN_OFFSET)
        refs = [r for r in (self.reference, later.reference) if r is not None]
        ref = max([*refs, gap_x])
        total = self._rescaled(ref) + later._rescaled(ref) + gap * math.exp(gap_x - ref)
        return replace(
            self,
            reference=ref,
            sum_w_ms=self.sum_w_ms + gap + later.sum_w_ms,
            sum_w_exp=total,
            last_ms=later.last_ms,
            last_c=later.last_c,
            last_interval_ms=later.last_interval_ms if later.sum_w_ms else gap,
        )

    def mkt_c(self, *, end_ms: int | None = None) -> float:
        """MKT (°C) so far; the pending last reading is weighted as the module docstring says."""
        if self.last_ms is None or self.last_c is None:
            raise ValidationError("MKT needs at least one reading")
        if end_ms is not None:
            if end_ms < self.last_ms:
                raise ValidationError("end_ms must not be before the last reading")
            tail = end_ms - self.last_ms
        else:
            tail = self.last_interval_ms if self.last_interval_ms is not None else 1
        if self.sum_w_ms + tail == 0:
            return self.last_c
        x_last = -self.delta_h_over_r_k / (self.last_c + KELVIN_OFFSET)
        ref = x_last if self.reference is None else max(self.reference, x_last)
        s = self._rescaled(ref) + tail * math.exp(x_last - ref)
        return float(_mkt_from_log_mean(ref + math.log(s / (self.sum_w_ms + tail)), self.delta_h_over_r_k))

    def log_mean(self) -> tuple[float, float]:
        """(ln of the weighted mean of exp(−ΔH/RT), total weight in ms) with the pending last
        reading weighted as `mkt_c()` does: what `mkt_of_log_means` joins across series."""
        if self.last_ms is None or self.last_c is None:
            raise ValidationError("MKT needs at least one reading")
        tail = self.last_interval_ms if self.last_interval_ms is not None else 1
        x_last = -self.delta_h_over_r_k / (self.last_c + KELVIN_OFFSET)
        ref = x_last if self.reference is None else max(self.reference, x_last)
        total = self.sum_w_ms + tail
        if total == 0:
            return x_last, 0.0
        s = self._rescaled(ref) + tail * math.exp(x_last - ref)
        return ref + math.log(s / total), float(total)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta_h_over_r_k": self.delta_h_over_r_k,
            "reference": self.reference,
            "sum_w_ms": self.sum_w_ms,
            "sum_w_exp": self.sum_w_exp,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "last_c": self.last_c,
            "last_interval_ms": self.last_interval_ms,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MktAccumulator:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValidationError(f"MKT accumulator: unknown key(s) {unknown}")
        return cls(**raw)


def mkt_of_log_means(parts: list[tuple[float, float]], delta_h_over_r_k: float) -> float:
    """MKT (°C) of several series together from each one's (ln weighted mean, weight in ms), as
    if their readings were one series: a lot's MKT over its legs, without reading them again."""
    dhr = _check_dhr(delta_h_over_r_k)
    used = [(m, w) for m, w in parts if w > 0]
    if not used:
        raise ValidationError("MKT needs at least one reading")
    ref = max(m for m, _ in used)
    total = sum(w for _, w in used)
    s = sum(w * math.exp(m - ref) for m, w in used)
    return float(_mkt_from_log_mean(ref + math.log(s / total), dhr))
