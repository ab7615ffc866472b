"""EPCIS capture benchmark, on a private PostgreSQL it starts.

A document of N time-stamped temperature reports (one ObjectEvent per 100 reports, one logger
per 10,000, each logger on a shipment) is captured end to end as POST /epcis/capture does it:
JSON parse, GS1's schema with formats checked plus the context, vocabulary and namespace rules,
event keys, readings through the ingest writer (binary COPY), the document kept, one commit.
Each run captures into a fresh database so nothing is a duplicate; the validation alone is
timed too. Figures are medians of the runs; the client's CPU seconds are given beside the
wall-clock ones, since on a shared machine the wall clock also measures the neighbours.

    python bench/epcis_capture.py [--quick] [--reports N]

The final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import psycopg  # noqa: E402

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot  # noqa: E402
from coldchain.settings import Settings  # noqa: E402
from embedded import PostgresServer  # noqa: E402
from erp.epcis_capture import capture_document  # noqa: E402
from evidence.epcis_schema import EPCIS_CONTEXT, document_problems  # noqa: E402
from ingest.core import AcceptanceBounds  # noqa: E402
from ingest.files.importer import file_writer  # noqa: E402
from storage import registry  # noqa: E402
from storage.migrate import migrate  # noqa: E402

GTIN = "09506000134352"
START = datetime(2026, 11, 1, tzinfo=UTC)
PER_EVENT = 100
PER_LOGGER = 10_000


def _stamp(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def document(n: int) -> bytes:
    events = []
    for e in range(0, n, PER_EVENT):
        elements = []
        for i in range(e, min(e + PER_EVENT, n)):
            logger, k = divmod(i, PER_LOGGER)
            elements.append({
                "sensorMetadata": {
                    "time": _stamp(START + timedelta(minutes=k)),
                    "deviceID": f"urn:coldchain:device:B{logger}",
                },
                "sensorReport": [{"type": "Temperature", "value": 4.0 + (i % 40) / 10, "uom": "CEL"}],
            })
        events.append({
            "type": "ObjectEvent",
            "action": "OBSERVE",
            "bizStep": "sensor_reporting",
            "eventTime": elements[-1]["sensorMetadata"]["time"],
            "eventTimeZoneOffset": "+00:00",
            "quantityList": [{"epcClass": f"https://id.gs1.org/01/{GTIN}/10/A1"}],
            "sensorElementList": elements,
        })
    return orjson.dumps({
        "@context": [EPCIS_CONTEXT],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _stamp(START),
        "epcisBody": {"eventList": events},
    })


def fresh_db(server: PostgresServer, name: str, loggers: int) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn_for(name)
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for g in range(loggers):
            registry.create_device(conn, org=1, device=Device(id=f"B{g}"), actor="bench")
            registry.create_shipment(conn, org=1, profile_version=1, actor="bench", shipment=Shipment(
                id=f"S{g}", profile="2-8C", lots=(ShipmentLot(Lot(GTIN, "A1")),),
                devices=(DeviceAssignment(f"B{g}", START, None),),
            ))
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    return dsn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reports", type=int, default=None)
    args = parser.parse_args()
    n = args.reports or (20_000 if args.quick else 100_000)
    runs = 2 if args.quick else 3
    raw = document(n)
    loggers = -(-n // PER_LOGGER)
    doc = orjson.loads(raw)
    checks: list[float] = []
    check_cpus: list[float] = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        assert document_problems(doc) == []
        checks.append(time.perf_counter() - t0)
        check_cpus.append(time.process_time() - c0)
    totals: list[float] = []
    cpus: list[float] = []
    limits = AcceptanceBounds.from_settings(Settings())
    with PostgresServer() as server:
        for i in range(runs):
            dsn = fresh_db(server, f"bench_epcis{i}", loggers)
            with psycopg.connect(dsn) as conn:
                conn.execute("SELECT 1")
                conn.commit()
                t0, c0 = time.perf_counter(), time.process_time()
                with conn.transaction():
                    report = capture_document(conn, raw, org=1, actor="bench", writer=file_writer(limits))
                totals.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            assert report.stored == n, report
            print(f"run {i}: {totals[-1]:.2f} s", file=sys.stderr)
    total = statistics.median(totals)
    check = statistics.median(checks)
    print(json.dumps({
        "bench": "epcis_capture",
        "sensor_reports": n,
        "document_bytes": len(raw),
        "events": -(-n // PER_EVENT),
        "loggers": loggers,
        "capture_s_median": round(total, 3),
        "capture_readings_per_s": round(n / total),
        "capture_client_cpu_s_median": round(statistics.median(cpus), 3),
        "validation_s_median": round(check, 3),
        "validation_cpu_s_median": round(statistics.median(check_cpus), 3),
        "validation_reports_per_s": round(n / check),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
