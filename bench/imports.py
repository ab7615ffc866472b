"""Benchmark of the bulk master-data import: 100,000 rows, checked, staged and upserted.

Starts a private PostgreSQL, imports 1,000 products, then times a CSV of 100,000 lots (GTIN check
digits, lot syntax, expiry dates, quantities and serial ranges checked row by row in Python;
unknown products and expiry conflicts checked in the database) as a dry run, as a real run, and
as a re-import of the same file (which must change nothing), and 100,000 device assignments
(overlaps checked in the file and against the database). Prints one JSON line last:
{"import_100k_rows_s": ..., "dry_run_100k_rows_s": ..., "reimport_100k_rows_s": ...,
"assignments_100k_rows_s": ...}.
Run: python bench/imports.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from coldchain.gs1 import gtin_check_digit
from embedded import PostgresServer
from erp.imports import run_import
from storage.migrate import migrate


def gtin(n: int) -> str:
    body = f"0950600{n:06d}"
    return body + str(gtin_check_digit(body))


def files(rows: int, products: int, seed: int = 5) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    rng = random.Random(seed)
    product_csv = "gtin;name;range_min_c;range_max_c;stability_budget_h;activation_energy_kj_mol\n" + "".join(
        f"{gtin(i)};Product {i};2;8;72;83,144\n" for i in range(products)
    )
    lot_lines = ["gtin,lot,expiry,quantity,serials"]
    for i in range(rows):
        lot_lines.append(
            f"{gtin(i % products)},L{i:07d},{2027 + i % 3}-{1 + i % 12:02d}-28,{rng.randint(1, 5000)},"
            f"S{i:07d}0..S{i:07d}9"
        )
    shipments = products  # one shipment per product keeps the file small
    shipment_csv = "id,profile,origin,destination\n" + "".join(
        f"SO-{i},2-8C,Plant,Hospital {i}\n" for i in range(shipments)
    )
    devices = rows // 10
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assignment_lines = ["device,shipment,from,to"]
    for i in range(rows):
        device, slot = i % devices, i // devices
        begin = start + timedelta(days=2 * slot)
        assignment_lines.append(
            f"L{device},SO-{i % shipments},{begin.isoformat()},{(begin + timedelta(days=1)).isoformat()}"
        )
    device_ids = [f"L{d}" for d in range(devices)]
    return (
        product_csv.encode(),
        ("\n".join(lot_lines) + "\n").encode(),
        shipment_csv.encode(),
        ("\n".join(assignment_lines) + "\n").encode(),
        "\n".join(device_ids).encode(),
    )


def timed(
    conn: psycopg.Connection, kind: str, data: bytes, *, dry_run: bool = False
) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    report = run_import(conn, org=1, kind=kind, data=data, actor="bench", dry_run=dry_run)
    elapsed = time.perf_counter() - started
    if report.error_count:
        raise SystemExit(f"{kind}: unexpected errors {report.errors[:3]}")
    return elapsed, {"inserted": report.inserted, "updated": report.updated, "unchanged": report.unchanged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = 20_000 if args.quick else 100_000
    products_csv, lots_csv, shipments_csv, assignments_csv, device_ids = files(rows, 1000)
    with PostgresServer() as server:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench_imports")
        dsn = server.dsn_for("bench_imports")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            timed(conn, "products", products_csv)
            dry_s, dry = timed(conn, "lots", lots_csv, dry_run=True)
            import_s, first = timed(conn, "lots", lots_csv)
            reimport_s, second = timed(conn, "lots", lots_csv)
            if first["inserted"] != rows or second["inserted"] or second["updated"]:
                raise SystemExit(f"unexpected counts: {first} then {second}")
            timed(conn, "shipments", shipments_csv)
            with (
                conn.cursor() as cur,
                cur.copy("COPY devices (id, org_id, kind, interval_s) FROM STDIN") as copy,
            ):
                for device in device_ids.decode().split("\n"):
                    copy.write_row((device, 1, "logger", 60))
            assign_s, assigned = timed(conn, "assignments", assignments_csv)
            if assigned["inserted"] != rows:
                raise SystemExit(f"unexpected assignment counts: {assigned}")
    scale = 100_000 / rows
    print(
        f"lots: dry run {dry_s:.2f} s, import {import_s:.2f} s, re-import {reimport_s:.2f} s;"
        f" assignments {assign_s:.2f} s ({rows} rows each)",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "rows": rows,
                "import_100k_rows_s": round(import_s * scale, 2),
                "dry_run_100k_rows_s": round(dry_s * scale, 2),
                "reimport_100k_rows_s": round(reimport_s * scale, 2),
                "assignments_100k_rows_s": round(assign_s * scale, 2),
                "dry_run_counts": dry,
            }
        )
    )


if __name__ == "__main__":
    main()
