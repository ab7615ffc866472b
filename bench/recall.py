"""Benchmark of recall impact: how long "what does this recall touch?" takes on a full database.

Starts a private PostgreSQL and builds, through the bulk import where it can: 1,000 products,
10,000 lots, 5,000 shipments (two to four lots each), 5,000 loggers with one window each, 20 M
readings (binary COPY, 4,000 per logger by default), 1,000 excursion alerts, a stability spend
per lot, each logger's series state with its running MKT (what the rules keep: the impact's MKT
per lot is joined from it) and 700 consignee contacts (opening a recall queues their
notifications in the same transaction). Then opens recalls, half by GTIN and one to three lots,
half by a logger and a two-day window, and times (a) the impact alone (lots resolved, every
shipment, consignee, logger, excursion, budget and MKT read and assembled) and (b) the whole
POST /recalls work (impact plus the recall record, its lots, consignees and their queued
notifications, committed). Prints one JSON line last:
{"recall_impact_p95_s": ..., "recall_open_p95_s": ..., "readings": ..., ...}.
Run: python bench/recall.py [--quick] [--readings N] [--recalls N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import psycopg

from coldchain.errors import ValidationError
from coldchain.gs1 import gtin_check_digit
from embedded import PostgresServer
from erp.imports import run_import
from erp.recalls import RecallRequest, impact_document, open_recall, resolve_lots
from storage import recalls as recall_store
from storage.copy_binary import Column, encode, epoch_ms_to_pg
from storage.migrate import migrate

START = datetime(2026, 6, 1, tzinfo=UTC)


def gtin(n: int) -> str:
    body = f"0950600{n:06d}"
    return body + str(gtin_check_digit(body))


def build(conn: psycopg.Connection, *, readings: int, rng: random.Random) -> None:
    products, lots, shipments = 1000, 10_000, 5000
    files = {
        "products": "gtin,name,stability_budget_h\n"
        + "".join(f"{gtin(p)},Product {p},72\n" for p in range(products)),
        "lots": "gtin,lot,quantity\n"
        + "".join(f"{gtin(i % products)},L{i:05d},{rng.randint(100, 5000)}\n" for i in range(lots)),
    }
    lines = ["id,profile,destination,gtin,lot,quantity"]
    for s in range(shipments):
        for lot in rng.sample(range(lots), rng.randint(2, 4)):
            lines.append(
                f"SO-{s:05d},2-8C,Consignee {s % 700},{gtin(lot % products)},L{lot:05d},{rng.randint(1, 100)}"
            )
    files["shipments"] = "\n".join(lines) + "\n"
    for kind, text in files.items():
        report = run_import(conn, org=1, kind=kind, data=text.encode(), actor="bench")
        if not report.committed:
            raise SystemExit(f"{kind}: {report.errors[:3]}")
    with conn.cursor() as cur, cur.copy("COPY devices (id, org_id, kind, interval_s) FROM STDIN") as copy:
        for d in range(shipments):
            copy.write_row((f"LOG-{d:05d}", 1, "logger", 60))
    assignments = ["device,shipment,from,to"]
    for s in range(shipments):
        begin = START + timedelta(hours=s)
        assignments.append(
            f"LOG-{s:05d},SO-{s:05d},{begin.isoformat()},{(begin + timedelta(days=3)).isoformat()}"
        )
    report = run_import(
        conn, org=1, kind="assignments", data=("\n".join(assignments) + "\n").encode(), actor="bench"
    )
    if not report.committed:
        raise SystemExit(f"assignments: {report.errors[:3]}")
    keys = dict(
        conn.execute(
            "SELECT d.key, a.shipment_key FROM devices d JOIN device_assignments a ON a.device_key = d.key"
        ).fetchall()
    )
    per_device = max(readings // shipments, 1)
    device_keys = np.array(sorted(keys), dtype=np.int32)
    chunk = max(1, 1_000_000 // per_device)
    with conn.transaction():
        for i in range(0, len(device_keys), chunk):
            devs = device_keys[i : i + chunk]
            n = len(devs) * per_device
            dev = np.repeat(devs, per_device)
            ship = np.array([keys[int(k)] for k in devs], dtype=np.int32).repeat(per_device)
            seq = np.tile(np.arange(per_device, dtype=np.int64), len(devs))
            base = int(START.timestamp() * 1000) + (dev.astype(np.int64) % shipments) * 3_600_000
            t_ms = base + seq * 60_000
            c = (5.0 + np.random.default_rng(i).normal(0, 1.0, n)).astype(np.float32)
            payload = encode(
                [
                    Column("int2", np.ones(n, dtype=np.int16)),
                    Column("int4", dev),
                    Column("int4", ship),
                    Column("int8", seq),
                    Column("timestamptz", epoch_ms_to_pg(t_ms)),
                    Column("float4", c),
                ]
            )
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY readings (org_id, device_key, shipment_key, seq, t, c) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(payload)
    shipment_keys = list(keys.values())
    with conn.transaction():
        conn.execute(
            "INSERT INTO alerts (org_id, episode_key, kind, severity, state, shipment_key, message,"
            " started_at, peak_c)"
            " SELECT 1, 'bench-' || k, 'single', 'alarm', 'open', k, 'above 8 °C', now(), 9.5"
            " FROM unnest(%s::int[]) AS k",
            (rng.sample(shipment_keys, 1000),),
        )
        conn.execute(
            "INSERT INTO lot_budget_state (org_id, gtin, lot, spent_s)"
            " SELECT org_id, gtin, lot, random() * 3600 FROM lots"
        )
        # The series state as the rules leave it: time outside the range and the running MKT
        # (ln weighted mean of exp(-ΔH/RT) near 5 °C, over the logger's readings).
        conn.execute(
            "INSERT INTO rule_series_state (shipment_key, device_key, org_id, profile_id, profile_version,"
            " state, last_ms, outside_s, mkt_log_mean, mkt_w_ms, mkt_dhr_k)"
            " SELECT a.shipment_key, a.device_key, 1, '2-8C', 1, '{}', 0, random() * 600,"
            " -10000.0 / (278.15 + random()), %s * 60000.0, 10000.0 FROM device_assignments a",
            (per_device,),
        )
        conn.execute(
            "INSERT INTO notify_contacts (org_id, id, name, email, customers)"
            " SELECT 1, 'consignee-' || n, 'Consignee ' || n, 'qa' || n || '@consignee.example',"
            " ARRAY['Consignee ' || n] FROM generate_series(0, 699) AS n"
        )
    conn.execute("VACUUM ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--readings", type=int, default=None)
    parser.add_argument("--recalls", type=int, default=None)
    args = parser.parse_args()
    readings = args.readings if args.readings is not None else (1_000_000 if args.quick else 20_000_000)
    recalls = args.recalls if args.recalls is not None else (40 if args.quick else 200)
    rng = random.Random(11)
    with PostgresServer() as server:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench_recall")
        dsn = server.dsn_for("bench_recall")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            build(conn, readings=readings, rng=rng)
            built_s = time.perf_counter() - started
            stored = conn.execute("SELECT count(*) FROM readings").fetchone()
            lot_rows = conn.execute("SELECT gtin, lot FROM lots").fetchall()
            requests = []
            for i in range(recalls):
                if i % 2 == 0:
                    g, _ = rng.choice(lot_rows)
                    same = [n for gg, n in lot_rows if gg == g]
                    requests.append(
                        RecallRequest(
                            reason="bench",
                            gtin=g,
                            lots=tuple(rng.sample(same, min(len(same), rng.randint(1, 3)))),
                        )
                    )
                else:
                    device = f"LOG-{rng.randrange(5000):05d}"
                    begin = START + timedelta(hours=rng.randrange(5000))
                    requests.append(
                        RecallRequest(
                            reason="bench", device=device, start=begin, end=begin + timedelta(days=2)
                        )
                    )
            impact_s, open_s, shipments_hit, mkt_known, lots_seen = [], [], [], 0, 0
            for request in requests:
                t0 = time.perf_counter()
                try:
                    lots = resolve_lots(conn, org=1, request=request)
                except ValidationError:  # a logger window that met no lot: still a timed answer
                    lots = []
                document = (
                    impact_document(recall_store.impact(conn, org=1, lots=lots))
                    if lots
                    else {"totals": {"shipments": 0}}
                )
                impact_s.append(time.perf_counter() - t0)
                shipments_hit.append(document["totals"]["shipments"])
                for lot in document.get("lots", []):
                    lots_seen += 1
                    mkt_known += lot["mkt_c"] is not None
                if lots:
                    t1 = time.perf_counter()
                    open_recall(conn, org=1, request=request, actor="bench")
                    open_s.append(time.perf_counter() - t1)
            queued = conn.execute("SELECT count(*) FROM notify_outbox WHERE kind = 'recall'").fetchone()

    def p95(values: list[float]) -> float:
        return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]

    print(
        f"built in {built_s:.0f} s; {recalls} recalls, median {statistics.median(impact_s) * 1000:.1f} ms",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "recall_impact_p95_s": round(p95(impact_s), 4),
                "recall_impact_median_s": round(statistics.median(impact_s), 4),
                "recall_open_p95_s": round(p95(open_s), 4),
                "recalls": recalls,
                "shipments_per_recall_mean": round(statistics.mean(shipments_hit), 2),
                "lots_with_mkt": f"{mkt_known}/{lots_seen}",
                "recall_notifications_queued": int(queued[0]) if queued else 0,
                "readings": int(stored[0]) if stored else 0,
                "shipments": 5000,
                "lots": 10_000,
            }
        )
    )


if __name__ == "__main__":
    main()
