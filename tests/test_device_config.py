"""Configuration to the device through real parts: the API stores a version and its publisher
sends it retained to Mosquitto, a real gateway agent process applies it and reports the version
in its status, ingest stores that status, and the API shows desired against applied."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from api.app import create_app
from coldchain.access import Role
from coldchain.presets import get_preset
from coldchain.settings import Settings
from coldchain.wire import DeviceConfig, Topics
from embedded import MosquittoServer
from ingest.service import IngestService
from storage import audit, auth, device_config
from storage.db import open_pool
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
GTIN = "09506000134352"


class Retained:
    """A subscriber keeping the last message of every topic under a filter."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.last: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.last[message.topic] = bytes(message.payload)

    def get(self, topic: str) -> bytes | None:
        with self._lock:
            return self.last.get(topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _token(dsn: str, role: Role = Role.ADMIN) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return auth.create_token(conn, org=1, name=f"{role.value}-config", role=role, actor="test")


@contextmanager
def _api(dsn: str, mqtt_url: str, topics: Topics) -> Iterator[TestClient]:
    """The real app with its config publisher on (MQTT_URL set), as `coldchain api` runs it."""
    settings = Settings(
        database_url=dsn, mqtt_url=mqtt_url, topic_prefix=topics.prefix, config_publish_poll_s=0.2
    )
    with open_pool(dsn, max_size=4) as pool, TestClient(create_app(settings, pool=pool)) as client:
        client.headers["Authorization"] = f"Bearer {_token(dsn)}"
        yield client


@pytest.fixture
def ingest(db_dsn: str, mqtt_url: str, topics: Topics) -> Iterator[IngestService]:
    """Ingest stores each device's retained status (where the applied version comes back)."""
    settings = Settings(database_url=db_dsn, mqtt_url=mqtt_url, topic_prefix=topics.prefix)
    service = IngestService(
        dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=settings,
        client_id=f"ingest-{topics.prefix.strip('/')}",
    )
    service.start()
    assert service.wait_ready(30)
    yield service
    service.stop()


def _agent(tmp_path: Path, mqtt_url: str, topics: Topics, device: str) -> subprocess.Popen[bytes]:
    """`gateway-agent run` as an installed gateway runs it, from a config file of its own."""
    config = tmp_path / "agent.toml"
    config.write_text(
        "\n".join(
            [
                f'data_dir = "{tmp_path}"',
                f'mqtt_url = "{mqtt_url}"',
                f'topic_prefix = "{topics.prefix}"',
                "reconnect_min_s = 0.05",
                "reconnect_max_s = 0.5",
                "console_alarm = false",
                "[[device]]",
                f'id = "{device}"',
                'driver = "simulated"',
            ]
        )
        + "\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with (tmp_path / "agent.log").open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway_agent.cli", "--config", str(config), "--log-level",
             "INFO", "run", "--no-sample"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
        )


def _shipment(client: TestClient, device: str, shipment: str = "SO-CFG-1") -> None:
    assert client.post("/api/v1/devices", json={"id": device, "interval_s": 120}).status_code == 201
    res = client.post(
        "/api/v1/shipments",
        json={
            "id": shipment,
            "profile": "2-8C",
            "lots": [{"gtin": GTIN, "lot": "CFG1"}],
            "devices": [{"id": device, "from": "2020-01-01T00:00:00Z", "to": None}],
        },
    )
    assert res.status_code == 201, res.text


def _config(client: TestClient, device: str) -> dict[str, Any]:
    res = client.get(f"/api/v1/devices/{device}/config")
    assert res.status_code == 200, res.text
    body: dict[str, Any] = res.json()
    return body


def test_the_config_reaches_a_real_agent_which_reports_the_version_it_applied(
    db_dsn: str, mqtt_url: str, topics: Topics, ingest: IngestService, tmp_path: Path
) -> None:
    device = "TRK-CFG-01"
    with _api(db_dsn, mqtt_url, topics) as client:
        _shipment(client, device)
        # Assigning the device to the shipment wrote version 1: the shipment and its local alarm.
        first = _config(client, device)
        assert first["version"] == 1
        assert first["desired"]["shipment"] == "SO-CFG-1"
        assert first["desired"]["interval_s"] == 120  # the registered interval is kept
        preset = get_preset("2-8C")
        local = first["desired"]["profile"]
        assert (local["id"], local["version"]) == (preset.id, preset.version)
        assert {x["id"]: x["threshold_c"] for x in local["limits"]} == {
            x.id: x.threshold_c for x in preset.limits if x.single_event_delay_s is not None
        }
        agent = _agent(tmp_path, mqtt_url, topics, device)
        try:
            applied = wait_for(
                lambda: (c := _config(client, device))["state"] == "applied" and c,
                timeout=60, what="the agent to report config v1",
            )
            assert applied["applied_version"] == 1 and applied["published_version"] == 1
            assert client.get(f"/api/v1/devices/{device}").json()["status"]["applied_config"] == 1

            res = client.put(
                f"/api/v1/devices/{device}/config",
                json={"interval_s": 30, "batch_size": 5, "batch_age_s": 90},
            )
            assert res.status_code == 200, res.text
            assert res.json()["version"] == 2 and res.json()["applied_version"] == 1
            second = wait_for(
                lambda: (c := _config(client, device))["applied_version"] == 2 and c,
                timeout=60, what="the agent to report config v2",
            )
            assert second["state"] == "applied"
            assert second["desired"]["interval_s"] == 30 and second["desired"]["batch_size"] == 5
            assert second["desired"]["shipment"] == "SO-CFG-1"  # the assignment still holds
        finally:
            agent.terminate()
            agent.wait(15)
        assert "config version 2 applied" in (tmp_path / "agent.log").read_text()
    with psycopg.connect(db_dsn) as conn:
        changes = audit.trail(conn, 1, "device_config", device)
    assert [c["new"]["version"] for c in changes] == [1, 2]
    assert changes[1]["old"]["interval_s"] == 120 and changes[1]["new"]["interval_s"] == 30


def test_a_config_set_while_the_broker_is_down_is_published_when_it_returns(
    db_dsn: str, private_mqtt: MosquittoServer, topics: Topics
) -> None:
    device = "TRK-CFG-02"
    with _api(db_dsn, private_mqtt.url, topics) as client:
        assert client.post("/api/v1/devices", json={"id": device}).status_code == 201
        private_mqtt.stop()
        res = client.put(f"/api/v1/devices/{device}/config", json={"interval_s": 45})
        assert res.status_code == 200, res.text
        assert res.json()["state"] == "pending" and res.json()["published_version"] == 0
        private_mqtt.start()
        done = wait_for(
            lambda: (c := _config(client, device))["state"] == "published" and c,
            timeout=60, what="the publisher to send the pending config",
        )
        assert done["published_version"] == 1
    sub = Retained(private_mqtt.port, topics.config(device))
    try:
        payload = wait_for(lambda: sub.get(topics.config(device)), timeout=20, what="the retained config")
    finally:
        sub.close()
    config = DeviceConfig.decode(payload)
    assert (config.version, config.interval_s, config.shipment) == (1, 45, None)


def test_a_version_left_unpublished_by_a_crash_is_sent_when_the_api_starts(
    db_dsn: str, mqtt_url: str, topics: Topics
) -> None:
    device = "TRK-CFG-03"
    with psycopg.connect(db_dsn) as conn:
        conn.execute("INSERT INTO devices (id, org_id, kind, interval_s) VALUES (%s, 1, 'logger', 60)",
                     (device,))
        # committed, never published: as if the API died between the commit and the PUBACK
        body = {"interval_s": 300, "batch_size": 20, "batch_age_s": 900, "shipment": None, "profile": None}
        device_config.desire(conn, org=1, device_id=device, body=body, actor="test", reason="test")
        device_config.desire(conn, org=1, device_id=device, body={**body, "interval_s": 240},
                             actor="test", reason="test")
        conn.commit()
        assert [p.version for p in device_config.pending(conn) if p.mqtt_name == device] == [2]
    sub = Retained(int(mqtt_url.rsplit(":", 1)[1]), topics.config(device))
    try:
        with _api(db_dsn, mqtt_url, topics) as client:
            done = wait_for(
                lambda: (c := _config(client, device))["state"] == "published" and c,
                timeout=60, what="the pending version to be published on start",
            )
            assert done["version"] == 2 and done["applied_version"] is None
        payload = wait_for(lambda: sub.get(topics.config(device)), timeout=20, what="the retained config")
    finally:
        sub.close()
    assert DeviceConfig.decode(payload).interval_s == 240


def test_config_input_is_checked_and_only_registrars_may_set_it(
    db_dsn: str, mqtt_url: str, topics: Topics
) -> None:
    with _api(db_dsn, mqtt_url, topics) as client:
        assert client.post("/api/v1/devices", json={"id": "TRK-CFG-04"}).status_code == 201
        for bad in ({"interval_s": 0}, {"batch_size": 20_001}, {"batch_age_s": "60"}, {"shipment": "X"}):
            res = client.put("/api/v1/devices/TRK-CFG-04/config", json=bad)
            assert res.status_code == 422, (bad, res.text)
        assert client.put("/api/v1/devices/NO-SUCH/config", json={}).status_code == 404
        assert client.get("/api/v1/devices/TRK-CFG-04/config").json()["state"] == "none"
        client.headers["Authorization"] = f"Bearer {_token(db_dsn, Role.DRIVER)}"
        assert client.put("/api/v1/devices/TRK-CFG-04/config", json={}).status_code == 403
        assert client.get("/api/v1/devices/TRK-CFG-04/config").status_code == 200
