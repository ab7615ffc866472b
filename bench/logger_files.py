"""Logger file benchmark, on a private PostgreSQL it starts:

* the 10,653-row Fridge-tag 2 L read-out (tests/data/loggers) imported end to end, as the upload
  does it: parse, hash, keep the original, readings through the ingest writer (one binary COPY),
  daily records, the platform's evaluation beside the device's, one commit. Each run imports into
  a fresh database so nothing is a duplicate; the figure is the median of the runs.
* the generic CSV importer's parse rate (best of three) on a generated export (ISO times, and a
  "dd.mm.yyyy HH:MM:SS" / decimal-comma / Windows-1252 variant), rows per second.

    python bench/logger_files.py [--quick]

The final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from api.field_data import import_and_compare  # noqa: E402
from coldchain.settings import Settings  # noqa: E402
from embedded import PostgresServer  # noqa: E402
from ingest.files.generic_csv import ColumnMapping, parse_csv  # noqa: E402
from storage.migrate import migrate  # noqa: E402

FT2L = ROOT / "tests" / "data" / "loggers" / "FridgeTag_2L__130500109088_202206081014.txt"


def fresh_db(server: PostgresServer, name: str) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn_for(name)
    migrate(dsn)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the set-up's writes flushed before the timed import
    return dsn


def import_once(dsn: str, raw: bytes) -> tuple[float, float, dict[str, object]]:
    settings = Settings(database_url=dsn)  # built once at start-up in the API, so not timed
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")  # connection set up outside the timing, as the API's pool does
        t0, c0 = time.perf_counter(), time.process_time()
        body = import_and_compare(
            conn, raw, org=1, organization="default", actor="bench", settings=settings,
            filename=FT2L.name,
        )
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, cpu, body


def csv_export(n: int, *, variant: str) -> tuple[bytes, ColumnMapping]:
    t0 = 1_700_000_000_000
    times = (t0 + np.arange(n, dtype=np.int64) * 60_000).astype("datetime64[ms]")
    stamps = np.datetime_as_string(times, unit="s")
    values = np.round(np.random.default_rng(7).normal(5.0, 1.0, n), 2).astype(str)
    if variant == "iso":
        lines = np.char.add(np.char.add(np.char.add(stamps, "Z,"), values), ",ok")
        return ("time,temp,note\n" + "\n".join(lines.tolist())).encode(), ColumnMapping(
            time_column="time", value_column="temp"
        )
    s = stamps
    local = [f"{x[8:10]}.{x[5:7]}.{x[0:4]} {x[11:19]}" for x in s.tolist()]
    rows = [f"{a};{b.replace('.', ',')};Kühlraum" for a, b in zip(local, values.tolist(), strict=True)]
    raw = ("Zeit;Temperatur;Ort\r\n" + "\r\n".join(rows)).encode("cp1252")
    return raw, ColumnMapping(
        time_column="Zeit", value_column="Temperatur", time_format="%d.%m.%Y %H:%M:%S",
        timezone="+01:00", delimiter=";", decimal=",", encoding="cp1252",
    )


def csv_rate(n: int, variant: str, repeats: int) -> float:
    raw, mapping = csv_export(n, variant=variant)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        lf = parse_csv(raw, mapping)
        best = min(best, time.perf_counter() - t0)
        assert len(lf) == n
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 3 if args.quick else 7
    rows = 200_000 if args.quick else 1_000_000
    raw = FT2L.read_bytes()
    times: list[float] = []
    cpus: list[float] = []
    with PostgresServer() as server:
        for i in range(runs):
            dsn = fresh_db(server, f"bench_files{i}")
            elapsed, cpu, body = import_once(dsn, raw)
            assert body["stored"] == 10_653 and body["discrepancies"] == [], body["discrepancies"]
            times.append(elapsed)
            cpus.append(cpu)
            print(f"run {i}: {elapsed * 1000:.0f} ms", file=sys.stderr)
    iso = csv_rate(rows, "iso", 3)
    local = csv_rate(rows, "local", 3)
    result = {
        "bench": "logger_files",
        "fridge_tag_2l_rows": 10_653,
        "import_end_to_end_s_median": round(statistics.median(times), 3),
        "import_end_to_end_s_min": round(min(times), 3),
        "import_client_cpu_s_median": round(statistics.median(cpus), 3),
        "import_target_s": 0.3,
        "csv_rows": rows,
        "csv_iso_rows_per_s": round(iso),
        "csv_local_decimal_comma_rows_per_s": round(local),
        "csv_target_rows_per_s": 500_000,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
