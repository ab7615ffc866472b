"""End to end through real servers: a logger publishes to Mosquitto, ingest writes, the rule
fires, and the alert and the lot's readings come back through the HTTP API."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from api.app import create_app
from coldchain.access import Role
from coldchain.domain import ReadingBatch
from coldchain.settings import Settings
from coldchain.wire import Topics, encode_binary, encode_json
from embedded import MosquittoServer
from ingest.service import IngestService
from rules.service import RulesService
from storage import auth
from storage.db import open_pool
from tests.support.contract import CONTRACT_EXAMPLE
from tests.support.waiting import wait_for

GTIN = "09506000134352"
MIN = 60_000


class Logger:
    """A minimal simulated logger: numbered batches over QoS 1, waiting for each PUBACK."""

    def __init__(self, url: str, topics: Topics, device: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.topics = topics
        self.device = device
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(self.topics.readings(self.device), payload, qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def platform(db_dsn: str, mqtt_url: str, topics: Topics) -> Iterator[dict[str, Any]]:
    settings = Settings(
        database_url=db_dsn, mqtt_url=mqtt_url, topic_prefix=topics.prefix, ingest_max_past_days=100_000
    )
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        token = auth.create_token(conn, org=1, name="admin", role=Role.ADMIN, actor="test")
    ingest = IngestService(
        dsn=db_dsn,
        mqtt_url=mqtt_url,
        topics=topics,
        settings=settings,
        client_id=f"ingest-{topics.prefix.strip('/')}",
    )
    ingest.start()
    assert ingest.wait_ready(30)
    rules = RulesService(dsn=db_dsn, settings=settings, poll_s=0.2)
    rules.start()
    with open_pool(db_dsn, max_size=4) as pool, TestClient(create_app(settings, pool=pool)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield {"client": client, "ingest": ingest, "settings": settings}
    rules.stop()
    ingest.stop()


def _register(client: TestClient, device: str, start: str) -> None:
    assert client.post("/api/v1/devices", json={"id": device, "kind": "reefer-logger"}).status_code == 201
    res = client.post(
        "/api/v1/shipments",
        json={
            "id": "SO-1001",
            "origin": "Plant A",
            "destination": "Hospital B",
            "profile": "2-8C",
            "lots": [
                {"gtin": GTIN, "lot": "A123", "expiry": "2027-05-31", "quantity": 400},
                {"gtin": GTIN, "lot": "A124", "quantity": 100},
            ],
            "devices": [{"id": device, "from": start, "to": None}],
        },
    )
    assert res.status_code == 201, res.text


def test_logger_to_alert_through_every_service(
    platform: dict[str, Any], mqtt_url: str, topics: Topics, db_dsn: str
) -> None:
    client: TestClient = platform["client"]
    t0 = (int(time.time() * 1000) // MIN - 240) * MIN  # four hours ago, on the minute
    _register(client, "TRK-0042-L1", datetime.fromtimestamp(t0 / 1000 - 60, tz=UTC).isoformat())
    temps = np.full(240, 5.0)
    temps[100:145] = 11.0  # the door stayed open for 45 minutes
    logger = Logger(mqtt_url, topics, "TRK-0042-L1")
    try:
        for seq, lo in enumerate(range(0, 240, 10), start=1):
            idx = np.arange(lo, lo + 10)
            batch = ReadingBatch(
                device="TRK-0042-L1",
                seq=seq,
                sent_ms=t0 + int(idx[-1]) * MIN,
                t_ms=t0 + idx.astype(np.int64) * MIN,
                celsius=temps[idx],
                rh=np.full(10, 55.0),
            )
            logger.publish(encode_binary(batch) if seq % 2 else encode_json(batch))
        first = encode_binary(
            ReadingBatch(
                device="TRK-0042-L1",
                seq=1,
                sent_ms=t0 + 9 * MIN,
                t_ms=t0 + np.arange(10, dtype=np.int64) * MIN,
                celsius=temps[:10],
                rh=np.full(10, 55.0),
            )
        )
        logger.publish(first)  # a redelivery of batch 1
        logger.publish(b"this is not a batch")
    finally:
        logger.close()

    alerts = wait_for(
        lambda: [a for a in client.get("/api/v1/alerts").json() if a["kind"] == "single"],
        what="an excursion alert",
    )
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["limit"] == "H1" and alert["device"] == "TRK-0042-L1" and alert["shipment"] == "SO-1001"
    assert alert["peak_c"] == 11.0 and alert["profile"] == "2-8C" and alert["profile_version"] == 1
    assert {(x["gtin"], x["lot"]) for x in alert["lots"]} == {(GTIN, "A123"), (GTIN, "A124")}
    started = datetime.fromisoformat(alert["started_at"])
    assert started == datetime.fromtimestamp((t0 + 100 * MIN) / 1000, tz=UTC)

    for lot in ("A123", "A124"):
        readings = client.get(f"/api/v1/lots/{GTIN}/{lot}/readings").json()["readings"]
        assert len(readings) == 240  # every reading once, the redelivered batch not twice
        assert max(r["c"] for r in readings) == 11.0
    buckets = client.get(f"/api/v1/lots/{GTIN}/A123/readings?bucket=1h").json()["readings"]
    assert sum(b["n"] for b in buckets) == 240
    lot = client.get(f"/api/v1/lots/{GTIN}/A123").json()
    assert [x["id"] for x in lot["excursions"]] == [alert["id"]]

    with psycopg.connect(db_dsn) as conn:
        letters = wait_for(
            lambda: conn.execute("SELECT reason FROM dead_letters").fetchall(), what="a dead letter"
        )
    assert len(letters) == 1 and letters[0][0]
    assert platform["ingest"].stats.duplicates >= 1


def test_contract_example_by_mosquitto_pub(
    platform: dict[str, Any], mqtt_server: MosquittoServer, topics: Topics
) -> None:
    """The docs/contract.md example, published by hand, lands linked to the right lots, once."""
    client: TestClient = platform["client"]
    _register(client, "TRK-0042-L1", "2026-11-24T08:00:00Z")
    example = CONTRACT_EXAMPLE.decode()
    cmd = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(mqtt_server.port),
        "-q",
        "1",
        "-V",
        "mqttv5",
        "-t",
        topics.readings("TRK-0042-L1"),
        "-m",
        example,
    ]
    for _ in range(2):
        subprocess.run(cmd, check=True, timeout=30)
    # Both copies have been through ingest once it counts the second as a redelivery.
    wait_for(lambda: platform["ingest"].stats.duplicates >= 1, what="the second copy to be seen")
    readings = client.get(f"/api/v1/lots/{GTIN}/A123/readings").json()["readings"]
    assert [(r["t"], r["c"], r["rh"]) for r in readings] == [
        ("2026-11-24T10:14:00Z", 4.6, 61.2),
        ("2026-11-24T10:15:00Z", 4.7, None),
    ]
    assert client.get("/api/v1/devices/TRK-0042-L1").json()["last_seq"] == 1187
