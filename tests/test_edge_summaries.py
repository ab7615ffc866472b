"""An edge outbox that overflows folds each bucket of readings into one summary reading (its
mean); the platform judges a summary by its extremes, so folding cannot hide an excursion."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from coldchain.presets import get_preset
from coldchain.settings import Settings
from coldchain.wire import Topics, decode_batch
from gateway_agent.drivers.base import Sample
from gateway_agent.outbox import Outbox
from ingest import IngestService
from rules.engine import SensorSeries, evaluate
from rules.runner import drain
from storage import evidence as evidence_store
from storage.readings import FLAG_SUMMARY
from tests.support.ingest import Publisher, now_ms, register, scalar, wait_until

MIN = 60_000


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


def _trip(start_ms: int) -> list[Sample]:
    """Six hours of minute readings at 3 °C; in the third hour 35 minutes at 10 °C (over H1 of
    2-8 °C for longer than its 30-minute delay) and two minutes at 30 °C (over H2, no delay)."""
    c = np.full(360, 3.0)
    c[130:165] = 10.0
    c[150:152] = 30.0
    return [Sample("EDGE-1", start_ms + i * MIN, float(v), 60.0) for i, v in enumerate(c)]


def _folded(tmp_path: Path, samples: list[Sample]) -> list[bytes]:
    """The trip as an agent sends it after a long time offline: hour buckets of summaries."""
    with Outbox(tmp_path / "o.sqlite3", max_readings=100, summary_bucket_s=3600) as outbox:
        for i in range(0, len(samples), 60):
            outbox.add(samples[i : i + 60])
            outbox.seal("EDGE-1", batch_size=60, max_age_s=86_400, now_ms=samples[-1].t_ms)
        return [b.payload(now_ms()) for b in outbox.pending("EDGE-1", limit=100)]


def test_a_folded_bucket_is_judged_by_its_extremes(
    tmp_path: Path, db: psycopg.Connection, service: IngestService, mqtt_url: str, topics: Topics
) -> None:
    start = now_ms() - 7 * 3600 * 1000
    register(db, ["EDGE-1"], since=datetime.fromtimestamp(start / 1000, UTC) - timedelta(minutes=5))
    samples = _trip(start)
    payloads = _folded(tmp_path, samples)
    summaries = [e for p in payloads for e in (decode_batch(p).extras or ()) if e and e.get("summary")]
    assert summaries, "the outbox bound must have folded readings into summaries"
    # The means alone stay inside 2-8 °C: judged by them, the trip would look clean.
    means = np.concatenate([decode_batch(p).celsius for p in payloads])
    assert float(means.max()) < 8.0

    with Publisher(mqtt_url) as pub:
        for payload in payloads:
            pub.publish(topics.readings("EDGE-1"), payload)
        assert pub.wait_all_acked(len(payloads))
    stored = len(means)
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == stored, timeout=30)
    flagged = scalar(db, "SELECT count(*) FROM readings WHERE flags & %s <> 0", (FLAG_SUMMARY,))
    assert flagged == len(summaries)
    assert scalar(db, "SELECT count(*) FROM reading_extremes") == len(summaries)

    drain(db)
    raised = db.execute("SELECT limit_id, severity, peak_c FROM alerts ORDER BY limit_id").fetchall()
    assert [(r[0], r[1], round(float(r[2]), 1)) for r in raised] == [
        ("H1", "alarm", 30.0),
        ("H2", "critical", 30.0),
    ]

    # The evidence reads the same judgment: the logger's maximum is the summary's, not a mean.
    shipment = evidence_store.shipment_key(db, org=1, shipment_id="SO-1001")
    device = scalar(db, "SELECT key FROM devices WHERE id = 'EDGE-1'")
    series = evidence_store.series(db, shipment_key=shipment, device_key=device)
    assert series.judged is not None
    assert float(series.judged[1].max()) == 30.0 and float(series.judged[0].min()) == 3.0


def test_the_engine_judges_low_limits_by_the_minimum_and_high_by_the_maximum() -> None:
    t = np.arange(0, 240 * MIN, 60 * MIN, dtype=np.int64)  # four hourly summaries
    mean = np.array([5.0, 5.0, 5.0, 5.0])
    low = np.array([4.0, 1.0, 4.0, 4.0])  # the second hour dipped below 2 °C
    high = np.array([6.0, 6.0, 6.0, 6.0])
    profile = get_preset("2-8C")
    assert evaluate(SensorSeries(t, mean), profile).excursions == []
    got = evaluate(SensorSeries(t, mean, low_c=low, high_c=high), profile).excursions
    assert [(x.limit_id, x.peak_value) for x in got] == [("L1", 1.0)]
