"""Benchmark of the evidence: a lot with 1,000,000 readings over 10 loggers (two legs of five).

Starts a private PostgreSQL, writes the readings as ingest does, lets the rules evaluate them
(so the report carries real alerts), then times each format rendered from one evidence object:
JSON, CSV, EPCIS, PDF, the sealed bundle (every format, hashed and zipped, written to disk) and
the bundle's verification. `load_1m_s` is building the evidence object (reading the readings
back with both clocks, and the rules' evaluation). `evidence_rss_mb` is the process's peak
resident set size over the whole run. Each timed step also reports its CPU seconds (`*_cpu_s`,
all threads of the process): on a shared, overloaded machine wall time says more about the
neighbours than about the code.

Prints one JSON line last. Run: python bench/evidence.py [--readings N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot  # noqa: E402
from embedded import PostgresServer  # noqa: E402
from evidence import bundle, model, signing, text  # noqa: E402
from evidence.epcis import epcis_bytes  # noqa: E402
from evidence.report import pdf_bytes  # noqa: E402
from evidence.tabular import csv_chunks, json_chunks  # noqa: E402
from rules.runner import drain  # noqa: E402
from storage import registry  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from storage.readings import ReadingRows, copy_rows  # noqa: E402
from tests.support.devices import known_devices  # noqa: E402

GTIN = "09506000134352"
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
STEP_MS = 60_000


def build_lot(conn: psycopg.Connection, readings: int, loggers: int = 10) -> None:
    per = readings // loggers
    legs = 2
    span_ms = per * STEP_MS
    rng = np.random.default_rng(7)
    for leg in range(legs):
        start = T0 + leg * span_ms
        devices = [f"B{leg}-{i}" for i in range(loggers // legs)]
        for d in devices:
            registry.create_device(conn, org=1, device=Device(id=d), actor="bench")
        registry.create_shipment(
            conn, org=1, profile_version=1, actor="bench",
            shipment=Shipment(
                id=f"BENCH-LEG-{leg + 1}", origin="Basel", destination="Lyon", profile="2-8C",
                lots=(ShipmentLot(Lot(GTIN, "BENCH1", stability_budget_s=72 * 3600), quantity=1000),),
                devices=tuple(
                    DeviceAssignment(d, datetime.fromtimestamp(start / 1000, UTC),
                                     datetime.fromtimestamp((start + span_ms) / 1000, UTC))
                    for d in devices
                ),
            ),
        )
        for i, d in enumerate(devices):
            dev = known_devices(conn, [d])[d]
            t = start + np.arange(per, dtype=np.int64) * STEP_MS
            c = 5.0 + 1.2 * np.sin(np.arange(per) / 300.0) + rng.normal(0, 0.15, per)
            for k in range(3):  # a few warm spells per logger, some long enough to alarm
                at = int(rng.integers(0, per - 200))
                c[at : at + 20 + 40 * k + 10 * i] += 5.0
            n = per
            with conn.transaction():
                copy_rows(conn, ReadingRows(
                    org_id=np.ones(n, np.int16), device_key=np.full(n, dev.key, np.int32),
                    shipment_key=dev.shipments_at(t), seq=np.zeros(n, np.int64), t_ms=t,
                    celsius=c.astype(np.float32), rh=np.full(n, np.nan, np.float32),
                    flags=np.zeros(n, np.int16),
                ))
                conn.execute(
                    "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, min_c, max_c)"
                    " VALUES (1, %s, %s, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), %s, %s)",
                    (dev.key, int(dev.shipments_at(t[:1])[0]), int(t[0]), int(t[-1]), float(c.min()),
                     float(c.max())),
                )
    conn.execute("ANALYZE readings")


CPU: dict[str, float] = {}


def timed(fn: Any, name: str | None = None) -> tuple[float, Any]:
    """Wall seconds of fn(); its CPU seconds (all threads) are kept in CPU under `name`."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if name is not None:
        CPU[name] = round(time.process_time() - cpu, 3)
    return time.perf_counter() - start, out


def drain_bytes(chunks: Any) -> int:
    return sum(len(c) for c in chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000)
    args = parser.parse_args()
    server = PostgresServer(fast_and_unsafe=True)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="coldchain-bench-evidence-"))
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_evidence")
        dsn = server.dsn_for("bench_evidence")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            setup_s, _ = timed(lambda: build_lot(conn, args.readings))
            rules_s, _ = timed(lambda: drain(conn))
            alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()
            load_s, ev = timed(lambda: model.lot_evidence(conn, org=1, gtin=GTIN, lot="BENCH1"))
        key = signing.signing_key(work / "data")
        url = "http://127.0.0.1:8000/api/v1/evidence/verify"
        table_s, _ = timed(text._decimal_table)  # once per process (a server builds it once)
        json_s, json_n = timed(lambda: drain_bytes(json_chunks(ev)), "json_1m_cpu_s")
        csv_s, csv_n = timed(lambda: drain_bytes(csv_chunks(ev)), "csv_1m_cpu_s")
        epcis_s, epcis_doc = timed(lambda: epcis_bytes(ev), "epcis_1m_cpu_s")
        record = hashlib.sha256()
        for chunk in json_chunks(ev):
            record.update(chunk)
        pdf_s, pdf = timed(lambda: pdf_bytes(ev, record_sha256=record.hexdigest(), verify_url=url, key=key),
                           "pdf_1m_cpu_s")
        path = work / "lot.zip"

        def write() -> None:
            with path.open("w+b") as out:
                bundle.write_bundle(ev, out, key=key, verify_url=url)

        bundle_s, _ = timed(write, "bundle_1m_cpu_s")
        verify_s, verdict = timed(lambda: bundle.verify_path(path, key.public), "verify_cpu_s")
        assert verdict.authentic, verdict.reason
        deep_s, deep = timed(lambda: bundle.verify_path(path, key.public, deep=True))
        assert deep.authentic, deep.reason
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures = {
            "readings": ev.readings,
            "alerts": int(alerts[0]) if alerts else 0,
            "setup_s": round(setup_s, 2),
            "rules_s": round(rules_s, 2),
            "load_1m_s": round(load_s, 3),
            "json_bytes": json_n,
            "csv_bytes": csv_n,
            "epcis_bytes": len(epcis_doc),
            "pdf_bytes": len(pdf),
            "bundle_bytes": path.stat().st_size,
            "json_1m_s": round(json_s, 3),
            "csv_1m_s": round(csv_s, 3),
            "epcis_1m_s": round(epcis_s, 3),
            "pdf_1m_s": round(pdf_s, 3),
            "bundle_1m_s": round(bundle_s, 3),
            "verify_s": round(verify_s, 3),
            "verify_deep_s": round(deep_s, 3),
            "evidence_rss_mb": round(rss_mb, 1),
            "decimal_table_s": round(table_s, 3),
            **CPU,
            "load_average": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(figures), flush=True)
    finally:
        server.destroy()
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
