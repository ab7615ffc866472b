"""The vectorised text of the evidence against plain Python: RFC 3339 times, decimals, rows; and
the chart's decimation keeping every extreme."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from evidence import text
from evidence.report import decimate

_MS = st.integers(min_value=-2_208_988_800_000, max_value=4_102_444_800_000)  # 1900 .. 2100


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decimal(v: float) -> str:
    x = int(np.rint(v * 1000))
    whole, frac = divmod(abs(x), 1000)
    digits = f"{frac:03d}".rstrip("0") or "0"
    return f"{'-' if x < 0 else ''}{whole}.{digits}"


@settings(max_examples=200, deadline=None)
@given(st.lists(_MS, min_size=1, max_size=50))
def test_rfc3339_times_equal_pythons(times: list[int]) -> None:
    t = np.array(sorted(times), dtype=np.int64)
    got = text.join_rows(t.size, [text.rfc3339_ms(t), b"\n"]).decode().split("\n")[:-1]
    assert got == [_iso(int(x)) for x in t]


_VALUE = st.floats(min_value=-2000, max_value=2000, width=32) | st.just(float("nan"))


@settings(max_examples=200, deadline=None)
@given(st.lists(_VALUE, min_size=1, max_size=50))
def test_decimals_equal_pythons_rounding(values: list[float]) -> None:
    v = np.array(values, dtype=np.float32)
    width = text.decimal_width(v)
    block, present = text.decimals(v, width)
    got = text.join_rows(v.size, [block, b"|"]).decode().split("|")[:-1]
    want = ["" if np.isnan(x) else _decimal(float(x)) for x in v]
    assert got == want
    assert present.tolist() == [not np.isnan(x) for x in v]


def test_decimation_keeps_every_extreme() -> None:
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.integers(1, 120_000, 50_000)).astype(np.int64)
    v = rng.normal(5, 1, t.size)
    v[12_345] = 40.0
    v[33_333] = -30.0
    dt, dv = decimate(t, v, buckets=300)
    assert dt.size <= 2 * 300 + 2 and bool(np.all(np.diff(dt) > 0))
    assert dv.max() == 40.0 and dv.min() == -30.0
    # every bucket's own minimum and maximum survive
    edges = np.linspace(int(t[0]), int(t[-1]) + 1, 301)
    for a, b in itertools.pairwise(edges):
        inside = (t >= a) & (t < b)
        if inside.any():
            kept = dv[(dt >= a) & (dt < b)]
            assert kept.max() == v[inside].max() and kept.min() == v[inside].min()
