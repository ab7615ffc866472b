"""Shared plumbing for the pipeline benchmarks: private servers, a registered fleet, and a QoS 1
publisher whose in-flight window stays far below paho's 16-bit message-id space."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from coldchain.alarm_profile import AlarmProfile
from coldchain.domain import Device, DeviceAssignment, ReadingBatch, Shipment
from coldchain.wire import Topics, encode_binary
from embedded import MosquittoServer, PostgresServer
from storage import profiles, registry
from storage.migrate import migrate


@dataclass
class Servers:
    pg: PostgresServer
    broker: MosquittoServer
    dsn: str


@contextmanager
def servers(*, durable: bool = True, engine: str = "auto") -> Iterator[Servers]:
    """A private PostgreSQL (fsync on unless `durable` is False) and Mosquitto, migrated on
    `engine` (auto: TimescaleDB when installed, which the private cluster then preloads)."""
    pg = PostgresServer(fast_and_unsafe=not durable)
    broker = MosquittoServer()
    pg.start()
    broker.start()
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = pg.dsn_for("bench")
        migrate(dsn, engine="auto" if engine == "auto" else "timescale" if engine == "timescale" else "plain")
        yield Servers(pg, broker, dsn)
    finally:
        broker.destroy()
        pg.destroy()


def register_fleet(
    dsn: str, *, devices: list[str], shipment: str, since_ms: int, profile: AlarmProfile | None = None
) -> None:
    """Devices on one shipment from `since_ms`, under a custom profile when one is given."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        profile_id = "2-8C"
        if profile is not None:
            profile_id = profiles.save(conn, org=1, profile=profile, actor="bench").id
        for device in devices:
            registry.create_device(conn, org=1, device=Device(id=device), actor="bench")
        start = datetime.fromtimestamp(since_ms / 1000, tz=UTC)
        with conn.transaction():
            registry.create_shipment(
                conn,
                org=1,
                profile_version=1,
                actor="bench",
                shipment=Shipment(
                    id=shipment,
                    profile=profile_id,
                    devices=tuple(DeviceAssignment(d, start) for d in devices),
                ),
            )


class Publisher:
    """Publishes QoS 1 with at most `window` messages unacknowledged (paho keys them by 16 bits)."""

    def __init__(self, port: int, *, window: int = 1000, client_id: str = "") -> None:
        self._slots = threading.BoundedSemaphore(window)
        self.acked = 0
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            protocol=MQTTProtocolVersion.MQTTv5,
            client_id=client_id,
        )
        self._client.max_inflight_messages_set(window)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_publish(self, *args: object) -> None:
        self.acked += 1
        self._slots.release()

    def publish(self, topic: str, payload: bytes) -> None:
        self._slots.acquire()
        self._client.publish(topic, payload, qos=1)

    def wait_acked(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def fridge_batch(device: str, seq: int, t0_ms: int, n: int, *, step_ms: int = 60_000, seed: int = 0) -> bytes:
    """A binary batch of n readings around 5 °C."""
    rng = np.random.default_rng(seed + seq)
    t = t0_ms + np.arange(n, dtype=np.int64) * step_ms
    return encode_binary(
        ReadingBatch(
            device=device,
            seq=seq,
            sent_ms=int(t[-1]),
            t_ms=t,
            celsius=5.0 + rng.normal(0, 0.3, n),
            rh=np.full(n, np.nan),
        )
    )


def count_readings(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0


def wait_for_rows(dsn: str, expected: int, *, timeout: float = 300.0) -> float:
    """Poll until `expected` readings are stored; returns the monotonic time it happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_readings(dsn) >= expected:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {expected} readings stored after {timeout:.0f} s")


__all__ = [
    "Publisher",
    "Servers",
    "Topics",
    "count_readings",
    "fridge_batch",
    "register_fleet",
    "servers",
    "wait_for_rows",
]
