"""Test plumbing for ingest: a QoS 1 publisher with a bounded in-flight window, batch makers,
registry set-up and an ingest worker run as its own OS process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from coldchain.domain import Device, DeviceAssignment, Lot, ReadingBatch, Shipment, ShipmentLot
from coldchain.mqtt_url import BrokerAddress
from coldchain.wire import Topics, encode_binary
from storage import registry
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
GTIN = "09506000134352"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Publisher:
    """A paho QoS 1 publisher that never has more than `window` messages unacknowledged.

    paho keys in-flight QoS 1 messages by a 16-bit id: a burst beyond 65,535 loses messages, so
    every publisher here waits on a semaphore released by PUBACK. A persistent session lets it
    ride out a broker restart (paho resends what was not acknowledged).
    """

    def __init__(self, url: str, *, window: int = 1000, client_id: str | None = None,
                 reconnect_s: int = 2) -> None:
        broker = BrokerAddress.parse(url)
        self._slots = threading.Semaphore(window)
        self.acked = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(0)
        # like a gateway: a reconnect backoff of seconds, not a busy loop
        self.client.reconnect_delay_set(reconnect_s, 4 * reconnect_s)
        self.client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._connected.wait(30):
            raise RuntimeError("publisher could not connect")

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        with self._lock:
            self.acked += 1
        self._slots.release()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._slots.acquire()
        self.client.publish(topic, payload, qos=1, retain=retain)

    def wait_all_acked(self, sent: int, timeout: float = 120.0) -> bool:
        return wait_until(lambda: self.acked >= sent, timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_batch(device: str, seq: int, *, n: int = 10, start_ms: int | None = None,
               step_ms: int = 60_000, sent_ms: int | None = None, celsius: float = 5.0) -> ReadingBatch:
    start = now_ms() - n * step_ms if start_ms is None else start_ms
    t = start + np.arange(n, dtype=np.int64) * step_ms
    return ReadingBatch(
        device=device,
        seq=seq,
        sent_ms=now_ms() if sent_ms is None else sent_ms,
        t_ms=t,
        celsius=np.full(n, celsius) + np.arange(n) * 0.01,
        rh=np.full(n, 55.0),
    )


def register(conn: psycopg.Connection, device_ids: list[str], *, shipment: str | None = "SO-1001",
             lot: str = "A123", since: datetime | None = None) -> None:
    """Register devices and (optionally) a shipment carrying one lot that they all ride with."""
    for d in device_ids:
        registry.create_device(conn, org=1, device=Device(id=d), actor="test")
    if shipment is not None:
        start = since or datetime.now(UTC) - timedelta(days=3)
        registry.create_shipment(
            conn, org=1,
            shipment=Shipment(
                id=shipment, lots=(ShipmentLot(Lot(GTIN, lot), 100),),
                devices=tuple(DeviceAssignment(d, start) for d in device_ids),
            ),
            profile_version=1, actor="test",
        )


def scalar(conn: psycopg.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def publish_load(pub: Publisher, topics: Topics, devices: list[str], batches: int, *,
                 readings: int = 20, first_seq: int = 1, per_second: float | None = None) -> int:
    """`batches` binary batches per device (paced to `per_second` messages); returns readings."""
    base = now_ms() - batches * readings * 1000
    total = 0
    started = time.monotonic()
    for s in range(batches):
        for d in devices:
            b = make_batch(d, first_seq + s, n=readings, start_ms=base + s * readings * 1000, step_ms=1000)
            pub.publish(topics.readings(d), encode_binary(b))
            total += readings
        if per_second:
            ahead = started + (s + 1) * len(devices) / per_second - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return total


@contextmanager
def ingest_process(dsn: str, mqtt_url: str, topics: Topics, *, client_id: str,
                   extra: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m ingest` as a child process; waits for its ready line; SIGKILLs it on exit."""
    proc = start_ingest_process(dsn, mqtt_url, topics, client_id=client_id, extra=extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def start_ingest_process(dsn: str, mqtt_url: str, topics: Topics, *, client_id: str,
                         extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "ingest", "--dsn", dsn, "--mqtt-url", mqtt_url,
            "--topic-prefix", topics.prefix, "--client-id", client_id, "--log-level", "WARNING",
            *(extra or [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"ingest ready" not in line:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"ingest process did not become ready: {line!r}")
    return proc
