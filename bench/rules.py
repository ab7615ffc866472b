"""Benchmark of the pure rules core: excursion engine throughput and MKT over 10 million readings.

Prints one JSON line last: {"excursion_samples_per_s": ..., "mkt_10m_samples_s": ...}.
`pure_figures()` is the part a full-pipeline benchmark calls and extends with its own figures.
Run: python bench/rules.py [--quick] (numpy is pinned to one thread before it is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from coldchain.alarm_profile import get_preset  # noqa: E402
from rules.engine import EngineState, SensorSeries, evaluate  # noqa: E402
from rules.mkt import mean_kinetic_temperature  # noqa: E402


def fridge_series(n: int, *, seed: int = 7, step_ms: int = 60_000) -> SensorSeries:
    """A 2-8 °C fridge logger: noise around 5 °C, daily door openings, a few real excursions."""
    rng = np.random.default_rng(seed)
    t = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * step_ms
    v = 5.0 + 1.2 * np.sin(np.arange(n) * (2 * np.pi / 1440)) + rng.normal(0, 0.3, n)
    for start in rng.integers(0, max(n - 200, 1), size=max(n // 50_000, 1)):
        v[start : start + int(rng.integers(10, 180))] += float(rng.uniform(4, 12))
    return SensorSeries(t, v)


def best_of(repeats: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def pure_figures(*, samples: int = 10_000_000, repeats: int = 3) -> dict[str, Any]:
    """Engine-alone and MKT timings on one core; the full-pipeline bench adds its own keys."""
    series = fridge_series(samples)
    profile = get_preset("2-8C")
    result = evaluate(series, profile, EngineState())
    # Timed with the input checks (sorted times, finite values) that every call pays.
    engine_s = best_of(
        repeats,
        lambda: evaluate(SensorSeries(series.times_ms, series.temps_c), profile, EngineState()),
    )
    mkt_s = best_of(
        repeats, lambda: mean_kinetic_temperature(series.times_ms, series.temps_c)
    )
    return {
        "samples": samples,
        "profile": profile.id,
        "excursions": len(result.excursions),
        "engine_s": round(engine_s, 4),
        "excursion_samples_per_s": round(samples / engine_s),
        "mkt_10m_samples_s": round(mkt_s * 10_000_000 / samples, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 million readings, one repeat")
    args = parser.parse_args(argv)
    figures = pure_figures(samples=1000000, repeats=1) if args.quick else pure_figures()
    figures["targets"] = {"excursion_samples_per_s": 2e7, "mkt_10m_samples_s": 0.5}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
