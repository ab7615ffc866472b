"""Bucketed lot reads: a 30-day history of a 10-logger lot in 1-hour buckets, as a chart asks for it.

    python bench/lot_readings.py [--quick] [--engine both|timescale|plain]

On TimescaleDB the read is summed from the continuous aggregates (refreshed and the older chunks
compressed first, as the policies leave them), and the raw date_bin read of the same rows is timed
beside it; on plain PostgreSQL it is date_bin over the raw readings (BRIN and b-tree indexes). Each
engine gets its own database on one private cluster. The final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot  # noqa: E402
from embedded import PostgresServer  # noqa: E402
from storage import readings as store  # noqa: E402
from storage import registry  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from storage.readings import ReadingRows, copy_rows, load_devices, lot_readings  # noqa: E402

LOGGERS = 10
DAYS = 30
OTHER_DEVICES = 90  # the rest of a 100-logger fleet, on other shipments in the same chunks
STEP_MS = 60_000


def build(dsn: str, *, start: datetime, days: int) -> list[int]:
    """The lot's 10 loggers plus the rest of the fleet, one reading a minute for `days` days."""
    rng = np.random.default_rng(11)
    keys: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for shipment, count, lot in (("SO-LOT", LOGGERS, "A1"), ("SO-OTHER", OTHER_DEVICES, "B9")):
            names = [f"{shipment}-{i:03d}" for i in range(count)]
            for name in names:
                registry.create_device(conn, org=1, device=Device(id=name), actor="bench")
            registry.create_shipment(
                conn, org=1, profile_version=1, actor="bench",
                shipment=Shipment(id=shipment, lots=(ShipmentLot(Lot("09506000134352", lot)),),
                                  devices=tuple(DeviceAssignment(n, start) for n in names)),
            )
            devices = load_devices(conn, names)
            t = int(start.timestamp() * 1000) + np.arange(days * 1440, dtype=np.int64) * STEP_MS
            n = len(t)
            for day in range(days):  # a day at a time, in time order as ingest writes them
                part = slice(day * 1440, (day + 1) * 1440)
                rows = [
                    ReadingRows(
                        org_id=np.ones(1440, np.int16), device_key=np.full(1440, d.key, np.int32),
                        shipment_key=d.shipments_at(t[part]), seq=np.full(1440, day, np.int64), t_ms=t[part],
                        celsius=np.round(5 + rng.normal(0, 1.0, n)[part], 2).astype(np.float32),
                        rh=np.full(1440, np.nan, np.float32), flags=np.zeros(1440, np.int16),
                    )
                    for d in devices.values()
                ]
                with conn.transaction():
                    copy_rows(conn, ReadingRows.concat(rows))
            if shipment == "SO-LOT":
                keys = [r[0] for r in conn.execute("SELECT key FROM shipments WHERE id = 'SO-LOT'")]
        conn.execute("VACUUM ANALYZE readings")
    return keys


def settle_timescale(dsn: str) -> None:
    """What the policies leave behind: aggregates refreshed, chunks older than 7 days compressed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for view in ("readings_5m", "readings_1h"):
            conn.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
        row = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
        ).fetchone()
        assert row is not None
        conn.execute("CALL run_job(%s)", (row[0],))
        conn.execute("VACUUM ANALYZE")


def time_reads(dsn: str, keys: list[int], *, start: datetime, end: datetime, repeats: int,
               raw: bool) -> dict[str, Any]:
    bucket = timedelta(hours=1)
    lat: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        source = None if raw else store.bucket_source(conn, bucket=bucket, start=start, end=end)
        saved = store.ROLLUPS
        if raw:
            store.ROLLUPS = ()  # the same call, forced onto the raw readings
        try:
            rows = lot_readings(conn, shipment_keys=keys, start=start, end=end, bucket=bucket)
            for _ in range(repeats):
                began = time.perf_counter()
                again = lot_readings(conn, shipment_keys=keys, start=start, end=end, bucket=bucket)
                lat.append(time.perf_counter() - began)
                assert again == rows
        finally:
            store.ROLLUPS = saved
    ms = np.array(lat) * 1000
    return {
        "source": source or "readings (date_bin)",
        "buckets": len(rows),
        "readings": int(sum(int(r["n"]) for r in rows)),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
    }, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 days instead of 30, fewer repeats")
    parser.add_argument("--engine", choices=("both", "timescale", "plain"), default="both")
    args = parser.parse_args()
    days = 7 if args.quick else DAYS
    repeats = 20 if args.quick else 100
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    result: dict[str, Any] = {"days": days, "loggers": LOGGERS, "bucket": "1h", "engines": {}}
    started = time.monotonic()
    with PostgresServer() as server:
        engines = ["timescale", "plain"] if server.timescale and args.engine == "both" else [
            "timescale" if args.engine == "timescale" or (args.engine == "both" and server.timescale)
            else "plain"
        ]
        answers = {}
        for engine in engines:
            name = f"bench_lot_{engine}"
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            dsn = server.dsn_for(name)
            migrate(dsn, engine="timescale" if engine == "timescale" else "plain")
            keys = build(dsn, start=start, days=days)
            figures: dict[str, Any] = {}
            if engine == "timescale":
                settle_timescale(dsn)
                figures["aggregate"], answers[engine] = time_reads(
                    dsn, keys, start=start, end=end, repeats=repeats, raw=False)
                figures["raw"], _ = time_reads(dsn, keys, start=start, end=end, repeats=repeats, raw=True)
            else:
                figures["raw"], answers[engine] = time_reads(
                    dsn, keys, start=start, end=end, repeats=repeats, raw=True)
            result["engines"][engine] = figures
    if len(answers) == 2:
        result["identical"] = answers["timescale"] == answers["plain"]
    primary = result["engines"].get("timescale", {}).get("aggregate") or result["engines"]["plain"]["raw"]
    result["engine"] = engines[0]
    result["p95_ms"] = primary["p95_ms"]
    result["target_p95_ms"] = 50
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
