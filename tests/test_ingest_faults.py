"""Fault injection: the ingest process killed with SIGKILL, Mosquitto restarted and PostgreSQL
restarted, each during a load. Afterwards every published reading is stored exactly once."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from coldchain.settings import Settings
from coldchain.wire import Topics
from embedded import MosquittoServer, PostgresServer
from ingest import IngestService
from storage.migrate import migrate
from tests.support.ingest import (
    Publisher,
    ingest_process,
    publish_load,
    register,
    scalar,
    start_ingest_process,
    wait_until,
)

pytestmark = pytest.mark.slow
DEVICES = [f"TRK-{i:03d}" for i in range(20)]


def _assert_exactly_once(conn: psycopg.Connection, *, batches: int, readings: int) -> None:
    assert scalar(conn, "SELECT count(*) FROM batches") == batches
    assert scalar(conn, "SELECT count(*) FROM readings") == readings
    doubled = scalar(
        conn,
        "SELECT count(*) FROM (SELECT device_key, seq, t FROM readings"
        " GROUP BY 1, 2, 3 HAVING count(*) > 1) AS d",
    )
    assert doubled == 0
    assert scalar(conn, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(conn, "SELECT count(*) FROM data_loss_events") == 0


class _Load:
    """Publishes in a background thread so faults can be injected meanwhile."""

    def __init__(self, url: str, topics: Topics, *, batches: int, readings: int = 20,
                 per_second: float = 1500) -> None:
        self.pub = Publisher(url)
        self.published = 0
        self.messages = batches * len(DEVICES)
        self._thread = threading.Thread(
            target=self._run, args=(topics, batches, readings, per_second), name="test-load",
            daemon=True,
        )
        self._thread.start()

    def _run(self, topics: Topics, batches: int, readings: int, per_second: float) -> None:
        self.published = publish_load(
            self.pub, topics, DEVICES, batches, readings=readings, per_second=per_second
        )

    def finish(self) -> int:
        self._thread.join(180)
        assert self.pub.wait_all_acked(self.messages, timeout=180)
        self.pub.close()
        return self.published


def test_kill_9_ingest_during_load(db_dsn: str, db: psycopg.Connection, mqtt_url: str,
                                   topics: Topics) -> None:
    register(db, DEVICES)
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    batches = 150
    proc = start_ingest_process(db_dsn, mqtt_url, topics, client_id=client_id)
    try:
        load = _Load(mqtt_url, topics, batches=batches)
        total_batches = batches * len(DEVICES)
        for kill in range(1, 4):
            target = total_batches * kill // 5
            assert wait_until(lambda t=target: scalar(db, "SELECT count(*) FROM batches") >= t,
                              timeout=120)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
            proc = start_ingest_process(db_dsn, mqtt_url, topics, client_id=client_id)
        published = load.finish()
        assert wait_until(lambda: scalar(db, "SELECT count(*) FROM batches") >= total_batches,
                          timeout=120)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    _assert_exactly_once(db, batches=total_batches, readings=published)


def test_two_workers_share_the_subscription(db_dsn: str, db: psycopg.Connection, mqtt_url: str,
                                            topics: Topics) -> None:
    register(db, DEVICES)
    with ingest_process(db_dsn, mqtt_url, topics, client_id=f"a-{uuid.uuid4().hex[:6]}"), \
            ingest_process(db_dsn, mqtt_url, topics, client_id=f"b-{uuid.uuid4().hex[:6]}"):
        load = _Load(mqtt_url, topics, batches=40)
        published = load.finish()
        assert wait_until(lambda: scalar(db, "SELECT count(*) FROM batches") >= 800, timeout=120)
    _assert_exactly_once(db, batches=800, readings=published)


def test_mosquitto_restart_during_load(db_dsn: str, db: psycopg.Connection,
                                       private_mqtt: MosquittoServer, topics: Topics) -> None:
    register(db, DEVICES)
    settings = Settings(ingest_group_max_wait_ms=20)
    with IngestService(dsn=db_dsn, mqtt_url=private_mqtt.url, topics=topics, settings=settings,
                       client_id=f"ingest-{uuid.uuid4().hex[:8]}") as svc:
        assert svc.wait_ready(30)
        load = _Load(private_mqtt.url, topics, batches=100)
        assert wait_until(lambda: scalar(db, "SELECT count(*) FROM batches") >= 400, timeout=120)
        private_mqtt.restart()
        published = load.finish()
        assert wait_until(lambda: scalar(db, "SELECT count(*) FROM batches") >= 2000, timeout=120)
    _assert_exactly_once(db, batches=2000, readings=published)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[PostgresServer, str]]:
    server = PostgresServer(fast_and_unsafe=True)
    server.start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE ingest_fault")
    dsn = server.dsn_for("ingest_fault")
    migrate(dsn)
    yield server, dsn
    server.destroy()


def test_postgres_restart_during_load(own_postgres: tuple[PostgresServer, str], mqtt_url: str,
                                      topics: Topics) -> None:
    server, dsn = own_postgres
    with psycopg.connect(dsn, autocommit=True) as conn:
        register(conn, DEVICES)
    settings = Settings(ingest_group_max_wait_ms=20)

    def stored() -> int:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                return scalar(conn, "SELECT count(*) FROM batches")
        except psycopg.OperationalError:
            return -1

    with IngestService(dsn=dsn, mqtt_url=mqtt_url, topics=topics, settings=settings,
                       client_id=f"ingest-{uuid.uuid4().hex[:8]}") as svc:
        assert svc.wait_ready(30)
        load = _Load(mqtt_url, topics, batches=100)
        assert wait_until(lambda: stored() >= 400, timeout=120)
        server.restart(mode="fast")
        assert wait_until(lambda: stored() >= 1000, timeout=120)
        server.restart(mode="immediate")
        published = load.finish()
        assert wait_until(lambda: stored() >= 2000, timeout=120)
        assert svc.stats.db_errors >= 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        _assert_exactly_once(conn, batches=2000, readings=published)
