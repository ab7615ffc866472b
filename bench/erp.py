"""Benchmark of the ERP outbox: what its triggers cost the rules' hot path, and how fast the worker
delivers.

Starts a private PostgreSQL and the local stand-ins of tests/support/erp_standins.py.

1. trigger cost: N alerts raised (one transaction each, as the rules raise them) in an
   organization without an ERP connection and in one with two connections (each alert then also
   writes an event and two deliveries): `alerts_per_s_without`, `alerts_per_s_with`.
2. delivery: the 2N deliveries of (1) pushed by one worker, half to a signed webhook receiver and
   half to the Odoo stand-in (login once, a search for the picking, a search for an earlier note,
   message_post): `webhook_and_odoo_deliveries_per_s`.

Prints one JSON line last. Run: python bench/erp.py [--quick] [--alerts N]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from coldchain.domain import Severity, Shipment  # noqa: E402
from coldchain.settings import Settings  # noqa: E402
from embedded import PostgresServer  # noqa: E402
from erp import credentials  # noqa: E402
from erp.outbox import ErpOutboxOptions, ErpOutboxWorker  # noqa: E402
from storage import auth, erp_outbox, registry  # noqa: E402
from storage.alerts import NewAlert, raise_alert  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from tests.support.erp_standins import OdooStandIn, WebhookReceiver, serve  # noqa: E402

SECRET_KEY = "e" * 40


def _raise_many(conn: psycopg.Connection, org: int, shipment_key: int, n: int, tag: str) -> float:
    started = time.perf_counter()
    for i in range(n):
        with conn.transaction():
            raise_alert(
                conn,
                NewAlert(
                    org_id=org,
                    episode_key=f"{tag}-{i}",
                    kind="single",
                    severity=Severity.ALARM,
                    message="above 8 °C",
                    started_at=datetime.now(UTC),
                    shipment_key=shipment_key,
                ),
            )
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--alerts", type=int, default=None)
    args = parser.parse_args()
    n = args.alerts if args.alerts is not None else (300 if args.quick else 2000)
    logging.basicConfig(level=logging.ERROR)
    odoo = OdooStandIn()
    odoo.add("stock.picking", name="S-with")
    with (
        PostgresServer() as server,
        serve(WebhookReceiver()) as hook_url,
        serve(odoo) as odoo_url,
        tempfile.TemporaryDirectory() as scratch,
    ):
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench_erp")
        dsn = server.dsn_for("bench_erp")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            other = auth.create_organization(conn, "with-erp", "With an ERP")
            for org, sid in ((1, "S-without"), (other, "S-with")):
                registry.create_shipment(
                    conn, org=org, shipment=Shipment(id=sid), profile_version=1, actor="bench"
                )
            keys = {
                org: registry.get_shipment(conn, org=org, shipment_id=sid).key
                for org, sid in ((1, "S-without"), (other, "S-with"))
            }
            for cid, kind, url, secret, options in (
                ("hook", "webhook", hook_url, "whsec-bench-0123456789", {}),
                ("odoo", "odoo", odoo_url, odoo.api_key, {"database": odoo.database, "login": odoo.login}),
            ):
                erp_outbox.put_connection(
                    conn,
                    org=other,
                    connection_id=cid,
                    kind=kind,
                    url=url,
                    options=options,
                    sealed_secret=credentials.seal(
                        SECRET_KEY, org_id=other, connection_id=cid, secret=secret
                    ),
                    events=list(erp_outbox.EVENT_KINDS),
                    enabled=True,
                    actor="bench",
                )
            # warm-up, then alternate the two organizations so both see the same database state
            _raise_many(conn, 1, keys[1], 50, "warm-a")
            _raise_many(conn, other, keys[other], 50, "warm-b")
            without: list[float] = []
            with_erp: list[float] = []
            rounds = 5
            for r in range(rounds):
                without.append(_raise_many(conn, 1, keys[1], n // rounds, f"a{r}"))
                with_erp.append(_raise_many(conn, other, keys[other], n // rounds, f"b{r}"))
            pending = erp_outbox.counts(conn).get("pending", 0)

            settings = Settings(database_url=dsn, data_dir=Path(scratch), secret_key=SECRET_KEY)  # type: ignore[arg-type]
            worker = ErpOutboxWorker(
                settings=settings,
                options=ErpOutboxOptions(batch_size=64),
                verify_url="https://qa.example/verify",
            )
            started = time.perf_counter()
            sent = worker.deliver_due(conn)
            deliver_s = time.perf_counter() - started
            counts = erp_outbox.counts(conn)
    print(
        f"{n} alerts per organization; {pending} deliveries; delivered {counts.get('delivered', 0)}"
        f" in {deliver_s:.1f} s",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "alerts_per_s_without": round(statistics.median(without), 1),
                "alerts_per_s_with": round(statistics.median(with_erp), 1),
                "trigger_overhead_pct": round(
                    100 * (statistics.median(without) / statistics.median(with_erp) - 1), 1
                ),
                "deliveries": sent,
                "delivered": counts.get("delivered", 0),
                "failed": counts.get("failed", 0),
                "webhook_and_odoo_deliveries_per_s": round(sent / deliver_s, 1),
                "alerts": n,
            }
        )
    )


if __name__ == "__main__":
    main()
