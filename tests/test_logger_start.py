"""The profile's start delay counts from when the logger started (its status says), not from
the first reading the platform happens to receive; the lot figures anchor it the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from coldchain.domain import ReadingBatch
from coldchain.presets import get_preset
from coldchain.settings import Settings
from coldchain.wire import DeviceStatus, Topics, encode_binary
from evidence.model import lot_figures_of
from gateway_agent.drivers.base import Sample
from gateway_agent.outbox import Outbox
from ingest import IngestService
from rules.engine import EngineState, SensorSeries, evaluate
from rules.runner import drain
from storage import registry
from tests.support.ingest import GTIN, Publisher, now_ms, register, scalar, wait_until

MIN = 60_000


def _warm_start(t0: int) -> tuple[np.ndarray, np.ndarray]:
    """Two hours of minute readings: 35 minutes at 11 °C first, then 5 °C."""
    c = np.full(120, 5.0)
    c[:35] = 11.0
    return t0 + np.arange(120, dtype=np.int64) * MIN, c


def test_the_start_delay_counts_from_the_logger_start() -> None:
    profile = get_preset("2-8C")  # start delay 10 min, H1 > 8 °C after 30 min
    t, c = _warm_start(1_795_000_000_000)
    # Counted from the first reading, the first 10 minutes are excused: 25 minutes over H1.
    assert evaluate(SensorSeries(t, c), profile).excursions == []
    # The logger had been running for an hour: nothing is excused, 35 minutes over H1.
    started = EngineState(logger_started_ms=int(t[0]) - 60 * MIN)
    (x,) = evaluate(SensorSeries(t, c), profile, started).excursions
    assert (x.limit_id, x.start_ms) == ("H1", int(t[0]))
    # A start reported after the first reading belongs to another trip: the series counts.
    later = EngineState(logger_started_ms=int(t[0]) + 5 * MIN)
    assert evaluate(SensorSeries(t, c), profile, later).excursions == []


@pytest.fixture
def service(db_dsn: str, mqtt_url: str, topics: Topics) -> Iterator[IngestService]:
    svc = IngestService(
        dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=Settings(ingest_group_max_wait_ms=20),
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
    )
    svc.start()
    assert svc.wait_ready(30)
    yield svc
    svc.stop()


def test_the_logger_start_from_its_status_reaches_the_rules_and_the_lot_figures(
    db: psycopg.Connection, service: IngestService, mqtt_url: str, topics: Topics
) -> None:
    t0 = now_ms() - 3 * 3600 * 1000
    register(db, ["L-START"], since=datetime.fromtimestamp(t0 / 1000, UTC) - timedelta(minutes=1))
    t, c = _warm_start(t0)
    batch = ReadingBatch(
        device="L-START", seq=1, sent_ms=now_ms(), t_ms=t, celsius=c, rh=np.full(t.size, np.nan)
    )
    with Publisher(mqtt_url) as pub:
        status = DeviceStatus(state="online", started_ms=t0 - 60 * MIN)
        pub.publish(topics.status("L-START"), status.encode(), retain=True)
        assert wait_until(
            lambda: scalar(db, "SELECT count(*) FROM devices WHERE status ? 'started_ms'") == 1, timeout=30
        )
        pub.publish(topics.readings("L-START"), encode_binary(batch))
        assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == t.size, timeout=30)
    drain(db)
    alerts = db.execute("SELECT limit_id, started_at FROM alerts").fetchall()
    assert alerts == [("H1", datetime.fromtimestamp(t0 / 1000, UTC))]
    anchored = db.execute("SELECT (state ->> 'logger_started_ms')::int8 FROM rule_series_state").fetchone()
    assert anchored == (t0 - 60 * MIN,)
    # The lot page's figures come from the same anchor: the same 35 minutes over H1.
    figures = lot_figures_of(db, org=1, rec=registry.get_lot(db, org=1, gtin=GTIN, lot="A123"))
    assert figures.time_out_of_range_s["H1"] == pytest.approx(35 * 60, abs=60)
    (logger,) = figures.loggers.values()
    assert [x.limit_id for x in logger.excursions] == ["H1"]


def test_the_agent_keeps_its_logging_start_across_restarts_and_a_new_trip_restarts_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as outbox:
        assert outbox.logger_started_ms("A") is None
        outbox.add([Sample("A", 1_000 + i * MIN, 5.0, 60.0) for i in range(3)])
        assert outbox.note_trip("A", "SO-1") is False  # the first trip it hears of
        assert outbox.logger_started_ms("A") == 1_000
    with Outbox(path) as outbox:  # a restart of the agent keeps it
        outbox.add([Sample("A", 9_000_000, 5.0, 60.0)])
        assert outbox.logger_started_ms("A") == 1_000
        assert outbox.note_trip("A", "SO-1") is False
        assert outbox.note_trip("A", "SO-2") is True  # a new trip
        assert outbox.logger_started_ms("A") is None
        outbox.add([Sample("A", 9_600_000, 5.0, 60.0)])
        assert outbox.logger_started_ms("A") == 9_600_000
