"""Benchmark of an assignment correction: how long re-linking a logger's readings takes.

Starts a private PostgreSQL (with TimescaleDB when installed: both engines are measured, the
TimescaleDB one with every chunk compressed, as the policy leaves data older than 7 days), stores
one logger's readings at one a minute on one shipment, then ends its ride half-way and hands the
second half to another shipment (two corrections: end the first window, add the second), and times
each correction (the set-based UPDATE of the readings and the rule work queued) and the rules
runner's evaluation of both series afterwards. Prints one JSON line last:
{"readings": ..., "<engine>_end_window_s": ..., "<engine>_add_window_s": ..., "<engine>_rules_s": ...}.
Run: python bench/assignment_correction.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import psycopg

from coldchain.domain import Device, Shipment
from embedded import PostgresServer
from embedded.postgres import find_bindir, timescaledb_installed
from rules.runner import drain
from storage import assignments, registry
from storage.migrate import migrate
from storage.readings import ReadingRows, copy_rows

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(dsn: str, engine: str, n: int) -> dict[str, float]:
    migrate(dsn, engine="timescale" if engine == "timescale" else "plain")
    with psycopg.connect(dsn, autocommit=True) as conn:
        registry.create_device(conn, org=1, device=Device(id="L1"), actor="bench")
        for sid in ("SO-A", "SO-B"):
            registry.create_shipment(
                conn, org=1, shipment=Shipment(id=sid, profile="2-8C"), profile_version=1, actor="b"
            )
        ride, _, _ = assignments.add_assignment(
            conn, org=1, shipment_id="SO-A", device_id="L1", starts=T0, ends=None, actor="bench"
        )
        key = ride.device_key
        temps = np.full(n, 5.0, np.float32)
        temps[n * 3 // 4 : n * 3 // 4 + 60] = 11.0  # an hour's excursion in the second half
        t = int(T0.timestamp() * 1000) + np.arange(n, dtype=np.int64) * 60_000
        with conn.transaction():
            copy_rows(
                conn,
                ReadingRows(
                    org_id=np.ones(n, np.int16),
                    device_key=np.full(n, key, np.int32),
                    shipment_key=np.full(n, ride.shipment_key, np.int32),
                    seq=np.zeros(n, np.int64),
                    t_ms=t,
                    celsius=temps,
                    rh=np.full(n, np.nan, np.float32),
                    flags=np.zeros(n, np.int16),
                ),
            )
            conn.execute(
                "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, late)"
                " VALUES (1, %s, %s, %s, %s, true)",
                (key, ride.shipment_key, T0, T0 + timedelta(minutes=n)),
            )
        drain(conn)
        if engine == "timescale":
            conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('readings') AS c"
            )
        conn.execute("VACUUM ANALYZE readings")
        half = T0 + timedelta(minutes=n // 2)
        started = time.perf_counter()
        _, moved = assignments.correct_assignment(
            conn, org=1, assignment_id=ride.id, changes={"to": half}, accepted=None, actor="bench"
        )
        end_s = time.perf_counter() - started
        started = time.perf_counter()
        _, joined, _ = assignments.add_assignment(
            conn, org=1, shipment_id="SO-B", device_id="L1", starts=half, ends=None, actor="bench"
        )
        add_s = time.perf_counter() - started
        if moved.readings != n - n // 2 or joined.readings != n - n // 2:
            raise SystemExit(f"unexpected re-links: {moved} then {joined}")
        started = time.perf_counter()
        stats = drain(conn)
        rules_s = time.perf_counter() - started
        alerts = conn.execute(
            "SELECT s.id, a.state FROM alerts a JOIN shipments s ON s.key = a.shipment_key ORDER BY a.id"
        ).fetchall()
        if ("SO-B", "resolved") not in alerts and ("SO-B", "open") not in alerts:
            raise SystemExit(f"the excursion did not follow its readings: {alerts} ({stats})")
    return {
        f"{engine}_end_window_s": round(end_s, 3),
        f"{engine}_add_window_s": round(add_s, 3),
        f"{engine}_rules_s": round(rules_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_160 if args.quick else 100_800  # 14 or 70 days at one reading a minute
    timescale = timescaledb_installed(find_bindir())
    result: dict[str, float | int] = {"readings": n}
    with PostgresServer(timescale=timescale) as server:
        engines = ["plain", "timescale"] if timescale else ["plain"]
        for engine in engines:
            with psycopg.connect(server.dsn, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE bench_relink_{engine}")
            result |= run(server.dsn_for(f"bench_relink_{engine}"), engine, n)
            print(f"{engine}: {result}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
