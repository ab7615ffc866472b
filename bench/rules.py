"""Benchmark of the rules: the pure engine, MKT over 10 million readings, and alert latency.

Prints one JSON line last: {"excursion_samples_per_s": ..., "mkt_10m_samples_s": ...,
"alert_latency_p99_s": ...}. Alert latency is measured through the real pipeline (publisher ->
Mosquitto -> ingest process -> PostgreSQL -> rules process -> alert row committed, seen by a
LISTEN on the `alerts` channel, which PostgreSQL delivers at commit) while a background fleet
publishes at half the pipeline's capacity, measured first in the same run: readings published as
fast as they go, stored by ingest and evaluated by the rules (the queue drained), per second.
The latency figures are taken on TimescaleDB and on plain PostgreSQL, one after the other, when
TimescaleDB is installed (`engines` in the JSON; the top-level figures are the first engine's).
Run: python bench/rules.py [--quick] [--no-pipeline] [--engine both|timescale|plain]
(numpy is pinned to one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from coldchain.presets import get_preset  # noqa: E402
from rules.engine import EngineState, SensorSeries, evaluate  # noqa: E402
from rules.mkt import mean_kinetic_temperature  # noqa: E402
from storage.migrate import Engine  # noqa: E402


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
    mkt_s = best_of(repeats, lambda: mean_kinetic_temperature(series.times_ms, series.temps_c))
    return {
        "samples": samples,
        "profile": profile.id,
        "excursions": len(result.excursions),
        "engine_s": round(engine_s, 4),
        "excursion_samples_per_s": round(samples / engine_s),
        "mkt_10m_samples_s": round(mkt_s * 10_000_000 / samples, 4),
    }


def alert_latency_figures(
    *, quick: bool, background_fraction: float = 0.5, engine: Engine = "auto"
) -> dict[str, Any]:
    """p50/p99 from a hot reading's publish to its alert's commit, under half-capacity load."""
    import subprocess
    import threading

    import psycopg

    from bench.pipeline import Publisher, fridge_batch, register_fleet, servers, wait_for_rows
    from coldchain.alarm_profile import AlarmProfile, Limit
    from coldchain.domain import ReadingBatch, Severity
    from coldchain.wire import Topics, encode_binary

    topics = Topics()
    step = 10_000
    since = (int(time.time() * 1000) // 60_000 - 7 * 24 * 60) * 60_000
    background = [f"BG-{i:03d}" for i in range(100)]
    probe_profile = AlarmProfile(
        id="probe",
        version=1,
        name="latency probe",
        limits=(
            Limit(id="HOT", side="high", threshold_c=25.0, tier=Severity.CRITICAL, single_event_delay_s=0),
        ),
    )
    with servers(durable=True, engine=engine) as srv:
        register_fleet(srv.dsn, devices=background, shipment="SO-BG", since_ms=since)
        register_fleet(
            srv.dsn, devices=["PROBE-1"], shipment="SO-PROBE", since_ms=since, profile=probe_profile
        )
        env = {
            **os.environ,
            "DATABASE_URL": srv.dsn,
            "MQTT_URL": srv.broker.url,
            "LOG_LEVEL": "WARNING",
            "SECRET_KEY": secrets.token_urlsafe(32),  # the rules service refuses to start without one
        }
        root = Path(__file__).resolve().parents[1]
        ingest = subprocess.Popen(
            [sys.executable, "-m", "ingest", "--client-id", "bench-ingest"],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        rules = subprocess.Popen([sys.executable, "-m", "coldchain.cli", "rules"], env=env, cwd=root)
        try:
            assert ingest.stdout is not None and "ready" in ingest.stdout.readline()
            pub = Publisher(srv.broker.port, client_id="bench-publisher")
            seqs = dict.fromkeys(background, 0)
            cursor = dict.fromkeys(background, since)

            def batch_for(dev: str) -> bytes:
                seqs[dev] += 1
                payload = fridge_batch(dev, seqs[dev], cursor[dev], 50, step_ms=step)
                cursor[dev] += 50 * step
                return payload

            # 1. capacity: as fast as the pipeline takes it
            rounds = 20 if quick else 60
            started = time.monotonic()
            for _ in range(rounds):
                for dev in background:
                    pub.publish(topics.readings(dev), batch_for(dev))
            total = rounds * len(background) * 50
            stored = wait_for_rows(srv.dsn, total)
            ingest_capacity = total / (stored - started)
            with psycopg.connect(srv.dsn) as conn:  # the pipeline is done when the rules are too
                while (row := conn.execute("SELECT count(*) FROM rule_queue").fetchone()) and row[0]:
                    time.sleep(0.02)
            capacity = total / (time.monotonic() - started)

            # 2. probes under a background load of half that capacity
            notified: dict[int, float] = {}
            stop = threading.Event()

            def listen() -> None:
                with psycopg.connect(srv.dsn, autocommit=True) as conn:
                    conn.execute("LISTEN alerts")
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.2):
                            notified.setdefault(int(note.payload), time.monotonic())

            listener = threading.Thread(target=listen, name="bench-listen", daemon=True)
            listener.start()
            time.sleep(0.5)
            duration = 15.0 if quick else 45.0
            per_s = max(1e-3, capacity * background_fraction / 50)  # background messages a second
            published: dict[int, float] = {}
            published_wall: dict[int, float] = {}
            probe_t = since + 1000
            began = time.monotonic()
            next_msg = next_probe = began
            sent = probe_seq = 0
            devices = iter(background * 100_000)
            while time.monotonic() - began < duration:
                now = time.monotonic()
                if now >= next_probe:
                    probe_seq += 1
                    t = np.array([probe_t, probe_t + 1000], dtype=np.int64)  # back inside, then hot
                    payload = encode_binary(
                        ReadingBatch(
                            device="PROBE-1",
                            seq=probe_seq,
                            sent_ms=int(t[-1]),
                            t_ms=t,
                            celsius=np.array([5.0, 30.0]),
                            rh=np.full(2, np.nan),
                        )
                    )
                    published[probe_t + 1000] = time.monotonic()
                    published_wall[probe_seq] = time.time()
                    pub.publish(topics.readings("PROBE-1"), payload)
                    probe_t += 2000
                    next_probe += 0.5
                if now >= next_msg:
                    dev = next(devices)
                    pub.publish(topics.readings(dev), batch_for(dev))
                    sent += 1
                    next_msg = began + sent / per_s
                time.sleep(max(0.0, min(next_msg, next_probe) - time.monotonic()))
            # Every probe's alert is waited for (up to 30 s); one still missing then counts with
            # the time waited, a lower bound, so a backlog cannot flatter the percentiles.
            deadline = time.monotonic() + 30.0
            with psycopg.connect(srv.dsn, autocommit=True) as conn:
                while True:
                    rows = conn.execute(
                        "SELECT a.id, (extract(epoch FROM a.started_at) * 1000)::bigint FROM alerts a"
                        " JOIN devices d ON d.key = a.device_key WHERE d.id = 'PROBE-1'"
                    ).fetchall()
                    seen = sum(1 for i, _ in rows if i in notified)
                    if seen >= probe_seq or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            waited_until = time.monotonic()
            stop.set()
            listener.join()
            if os.environ.get("BENCH_STAGES"):
                with psycopg.connect(srv.dsn) as conn:
                    for row in conn.execute(
                        "SELECT b.seq, b.received_at, a.opened_at, a.id FROM batches b"
                        " JOIN devices d ON d.key = b.device_key"
                        " LEFT JOIN alerts a ON a.device_key = b.device_key"
                        "  AND a.started_at = b.sent_at WHERE d.id = 'PROBE-1' ORDER BY b.seq"
                    ):
                        seq, received = row[0], row[1].timestamp()
                        opened = row[2].timestamp() if row[2] else None
                        print(f"stage seq={seq} to_ingest={received - published_wall.get(seq, received):.3f}"
                              f" to_rules={(opened - received) if opened else -1:.3f}", file=sys.stderr)
            alerted = {int(ms): notified[i] for i, ms in rows if i in notified}
            latencies = sorted(alerted.get(ms, waited_until) - at for ms, at in published.items())
            missing = sum(1 for ms in published if ms not in alerted)
            pub.close()
        finally:
            for proc in (ingest, rules):
                proc.terminate()
                proc.wait(timeout=30)
    lat = np.array(latencies)
    return {
        "ingest_capacity_rps": round(ingest_capacity),
        "pipeline_capacity_rps": round(capacity),
        "background_rps": round(capacity * background_fraction),
        "probes": probe_seq,
        "alerts_seen": int(lat.size) - missing,
        "alert_latency_p50_s": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "alert_latency_p99_s": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 million readings, one repeat, short load")
    parser.add_argument("--no-pipeline", action="store_true", help="the pure engine and MKT only")
    parser.add_argument("--background-fraction", type=float, default=0.5, help="background load / capacity")
    parser.add_argument("--engine", choices=("both", "timescale", "plain"), default="both",
                        help="both (where TimescaleDB is installed), or one of them")
    args = parser.parse_args(argv)
    figures = pure_figures(samples=1000000, repeats=1) if args.quick else pure_figures()
    if not args.no_pipeline:
        from embedded.postgres import find_bindir, timescaledb_installed

        installed = timescaledb_installed(find_bindir())
        if args.engine == "both":
            engines = ["timescale", "plain"] if installed else ["plain"]
        elif args.engine == "timescale" and not installed:
            raise SystemExit("TimescaleDB is not installed here")
        else:
            engines = [args.engine]
        per_engine = {
            engine: {"engine": engine, **alert_latency_figures(
                quick=args.quick, background_fraction=args.background_fraction, engine=engine)}
            for engine in engines
        }
        figures.update(per_engine[engines[0]])
        figures["engines"] = per_engine
    figures["targets"] = {
        "excursion_samples_per_s": 2e7,
        "mkt_10m_samples_s": 0.5,
        "alert_latency_p99_s": 1.0,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
