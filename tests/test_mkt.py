"""Mean kinetic temperature: known answers, duration weighting, accumulator and rolling windows."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain.errors import ValidationError
from rules.mkt import MktAccumulator, mean_kinetic_temperature, rolling_mkt

HOUR = 3_600_000


def test_known_answer_18h_at_5_then_6h_at_14() -> None:
    t = np.array([0, 18 * HOUR], dtype=np.int64)
    assert mean_kinetic_temperature(t, [5.0, 14.0], end_ms=24 * HOUR) == pytest.approx(
        8.29, abs=0.005
    )
    # the same day as hourly readings: the last one stands for the hour before it
    hourly = np.arange(24, dtype=np.int64) * HOUR
    temps = [5.0] * 18 + [14.0] * 6
    assert mean_kinetic_temperature(hourly, temps) == pytest.approx(8.29, abs=0.005)
    assert float(np.mean(temps)) == 7.25  # MKT is above the arithmetic mean


@given(st.floats(-80, 60), st.lists(st.integers(1, 10_000_000), min_size=1, max_size=50))
def test_constant_series_is_its_own_temperature(value: float, steps: list[int]) -> None:
    t = np.cumsum(np.asarray(steps, dtype=np.int64))
    assert mean_kinetic_temperature(t, [value] * len(t)) == pytest.approx(value, abs=1e-9)


def test_uneven_intervals_weigh_by_duration() -> None:
    # 1 h at 20 °C then one reading at 30 °C lasting 3 h
    t = np.array([0, HOUR], dtype=np.int64)
    got = mean_kinetic_temperature(t, [20.0, 30.0], end_ms=4 * HOUR)
    k = 10_000.0
    mean = (1 * math.exp(-k / 293.15) + 3 * math.exp(-k / 303.15)) / 4
    assert got == pytest.approx(-k / math.log(mean) - 273.15, abs=1e-9)
    # sixty readings in a warm hour weigh as much as one reading standing for that hour
    dense = np.array([0, *(10 * HOUR + np.arange(60) * 60_000)], dtype=np.int64)
    sparse = np.array([0, 10 * HOUR], dtype=np.int64)
    assert mean_kinetic_temperature(dense, [5.0, *([25.0] * 60)], end_ms=11 * HOUR) == (
        pytest.approx(mean_kinetic_temperature(sparse, [5.0, 25.0], end_ms=11 * HOUR), abs=1e-9)
    )


def test_extreme_temperatures_do_not_overflow() -> None:
    t = np.arange(4, dtype=np.int64) * HOUR
    got = mean_kinetic_temperature(t, [-200.0, 500.0, -80.0, 150.0])
    assert math.isfinite(got) and -200 < got < 500


series_st = st.lists(
    st.tuples(st.integers(1, 100_000_000), st.floats(-40, 50)), min_size=1, max_size=80
)


@settings(max_examples=200, deadline=None)
@given(series_st, st.lists(st.integers(0, 80), max_size=6), st.booleans())
def test_accumulator_batch_by_batch_equals_one_pass(
    readings: list[tuple[int, float]], cuts: list[int], via_merge: bool
) -> None:
    t = np.cumsum(np.asarray([r[0] for r in readings], dtype=np.int64))
    v = np.asarray([r[1] for r in readings])
    bounds = sorted({0, len(t), *(c % (len(t) + 1) for c in cuts)})
    acc = MktAccumulator()
    for a, b in itertools.pairwise(bounds):
        acc = acc.merge(MktAccumulator().extend(t[a:b], v[a:b])) if via_merge else acc.extend(t[a:b], v[a:b])
        acc = MktAccumulator.from_dict(json.loads(json.dumps(acc.to_dict())))
    assert acc.mkt_c() == pytest.approx(mean_kinetic_temperature(t, v), abs=1e-9)
    end = int(t[-1]) + 12_345
    assert acc.mkt_c(end_ms=end) == pytest.approx(
        mean_kinetic_temperature(t, v, end_ms=end), abs=1e-9
    )


@settings(max_examples=100, deadline=None)
@given(series_st, st.sampled_from([3600, 86_400]))
def test_rolling_mkt_equals_mkt_of_the_clipped_window(
    readings: list[tuple[int, float]], window_s: int
) -> None:
    t = np.cumsum(np.asarray([r[0] for r in readings], dtype=np.int64))
    v = np.asarray([r[1] for r in readings])
    got = rolling_mkt(t, v, window_s)
    assert math.isnan(got[0])
    for k in range(1, len(t)):
        start = max(int(t[k]) - window_s * 1000, int(t[0]))
        # readings inside the window, plus the one holding at its start, clipped to it
        j = int(np.searchsorted(t, start, side="right")) - 1
        tt = np.concatenate(([start], t[j + 1 : k]))
        vv = np.concatenate(([v[j]], v[j + 1 : k]))
        expected = mean_kinetic_temperature(tt, vv, end_ms=int(t[k]))
        assert got[k] == pytest.approx(expected, abs=1e-6)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValidationError, match="strictly increasing"):
        mean_kinetic_temperature(np.array([2, 1], np.int64), [5.0, 5.0])
    with pytest.raises(ValidationError, match="absolute zero"):
        mean_kinetic_temperature(np.array([1], np.int64), [-300.0])
    with pytest.raises(ValidationError, match="at least one"):
        mean_kinetic_temperature(np.array([], np.int64), [])
    with pytest.raises(ValidationError, match="later"):
        MktAccumulator().extend([5], [5.0]).extend([5], [5.0])
