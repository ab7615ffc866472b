"""A logger's live state as ingest and the device checks see it: its row (locked for accounting),
its assignment windows, last sequence number, clock offset and retained status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

from storage.rows import fetch_all


@dataclass(frozen=True, slots=True)
class Assignment:
    shipment_key: int
    start_ms: int
    end_ms: int  # exclusive; a very large number when open-ended


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """What ingest needs to know of a registered device to store its readings."""

    mqtt_name: str
    key: int
    org_id: int
    interval_s: int
    last_seq: int | None
    assignments: tuple[Assignment, ...]
    clock_offset_ms: int | None = None

    def shipments_at(self, t_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The shipment key each reading time falls in (-1 where the device was on none)."""
        out = np.full(len(t_ms), -1, dtype=np.int32)
        for a in self.assignments:
            out[(t_ms >= a.start_ms) & (t_ms < a.end_ms)] = a.shipment_key
        return out


_OPEN_END_MS = 1 << 62


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A registered device's row as ingest reads it (locked or not: see lock_devices, read_devices),
    found by its MQTT name: the device a topic and a batch name."""

    mqtt_name: str
    key: int
    org_id: int
    interval_s: int
    last_seq: int | None
    clock_offset_ms: int | None


_STATE_COLUMNS: Final = "mqtt_name, key, org_id, interval_s, last_seq, clock_offset_ms"


def device_id(conn: psycopg.Connection, device_key: int) -> str | None:
    """The id of the device with this key, if it exists."""
    row = conn.execute("SELECT id FROM devices WHERE key = %s", (device_key,)).fetchone()
    return None if row is None else str(row[0])


def lock_devices(conn: psycopg.Connection, mqtt_names: Sequence[str]) -> dict[str, DeviceState]:
    """The registered devices among `mqtt_names`, row-locked in key order.

    The lock serialises two ingest workers that hold batches of the same device, so `last_seq`
    (and the gaps computed from it) is exact; key order keeps two workers from deadlocking.
    It is FOR NO KEY UPDATE because ingest changes no key column: a FOR UPDATE lock would also
    block every foreign-key check on the device (rule state, alerts) for the whole group.
    """
    if not mqtt_names:
        return {}
    rows = fetch_all(
        conn,
        DeviceState,
        f"SELECT {_STATE_COLUMNS} FROM devices WHERE mqtt_name = ANY(%s) ORDER BY key FOR NO KEY UPDATE",
        (list(mqtt_names),),
    )
    return {r.mqtt_name: r for r in rows}


def read_devices(conn: psycopg.Connection, mqtt_names: Sequence[str]) -> dict[str, DeviceState]:
    """The registered devices among `mqtt_names`, read without a lock.

    Key, organisation and clock offset are what the copy stage of a group needs; `last_seq` is
    only a hint here (lock_devices reads it exactly before it is used for accounting).
    """
    if not mqtt_names:
        return {}
    rows = fetch_all(
        conn,
        DeviceState,
        f"SELECT {_STATE_COLUMNS} FROM devices WHERE mqtt_name = ANY(%s)",
        (list(mqtt_names),),
    )
    return {r.mqtt_name: r for r in rows}


def load_assignments(
    conn: psycopg.Connection, device_keys: Sequence[int], *, start_ms: int, end_ms: int
) -> dict[int, tuple[Assignment, ...]]:
    """Assignment windows of these devices that overlap [start_ms, end_ms]."""
    if not device_keys:
        return {}
    rows = conn.execute(
        "SELECT device_key, shipment_key,"
        " (extract(epoch FROM lower(during)) * 1000)::bigint,"
        " (extract(epoch FROM upper(during)) * 1000)::bigint"
        " FROM device_assignments WHERE device_key = ANY(%s)"
        " AND during && tstzrange(to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), '[]')"
        " ORDER BY device_key, lower(during)",
        (list(device_keys), start_ms, end_ms),
    ).fetchall()
    found: dict[int, list[Assignment]] = {}
    for dev, shipment, start, end in rows:
        found.setdefault(dev, []).append(
            Assignment(int(shipment), int(start), int(end) if end is not None else _OPEN_END_MS)
        )
    return {k: tuple(v) for k, v in found.items()}


def known_device(state: DeviceState, assignments: tuple[Assignment, ...]) -> KnownDevice:
    return KnownDevice(
        mqtt_name=state.mqtt_name,
        key=state.key,
        org_id=state.org_id,
        interval_s=state.interval_s,
        last_seq=state.last_seq,
        assignments=assignments,
        clock_offset_ms=state.clock_offset_ms,
    )


def update_devices(
    conn: psycopg.Connection,
    *,
    device_keys: Sequence[int],
    last_seen_ms: Sequence[int],
    last_seq: Sequence[int],
    clock_offset_ms: Sequence[int],
) -> None:
    if not device_keys:
        return
    conn.execute(
        "UPDATE devices SET last_seen_at = greatest(last_seen_at, to_timestamp(u.r / 1000.0)),"
        " last_seq = greatest(last_seq, u.s), clock_offset_ms = u.c"
        " FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int8[]) AS u(k, r, s, c)"
        " WHERE devices.key = u.k",
        (list(device_keys), list(last_seen_ms), list(last_seq), list(clock_offset_ms)),
    )


def update_status(
    conn: psycopg.Connection, *, mqtt_name: str, status: dict[str, Any], received_ms: int
) -> bool:
    """Store a device's retained status; an older message never overwrites a newer one."""
    cur = conn.execute(
        "UPDATE devices SET status = %s::jsonb, status_at = to_timestamp(%s / 1000.0)"
        " WHERE mqtt_name = %s AND (status_at IS NULL OR status_at <= to_timestamp(%s / 1000.0))",
        (Jsonb(status), received_ms, mqtt_name, received_ms),
    )
    return cur.rowcount > 0


@dataclass(frozen=True, slots=True)
class LoggerOnShipment:
    """A logger assigned to a shipment now: when it was last heard from, under which profile."""

    org_id: int
    device_key: int
    device_id: str
    shipment_key: int
    interval_s: int
    last_seen_ms: int | None
    profile_id: str
    profile_version: int


def devices_on_shipments(conn: psycopg.Connection) -> list[LoggerOnShipment]:
    """Every logger currently assigned to a shipment, with the shipment's profile (id, version)."""
    return fetch_all(
        conn,
        LoggerOnShipment,
        "SELECT d.org_id, d.key AS device_key, d.id AS device_id, a.shipment_key, d.interval_s,"
        " (extract(epoch FROM coalesce(d.last_seen_at, lower(a.during))) * 1000)::bigint AS last_seen_ms,"
        " s.profile_id, s.profile_version"
        " FROM device_assignments a JOIN devices d ON d.key = a.device_key"
        " JOIN shipments s ON s.key = a.shipment_key WHERE a.during @> now()",
    )


@dataclass(frozen=True, slots=True)
class BatteryReading:
    org_id: int
    device_key: int
    device_id: str
    shipment_key: int
    profile_id: str
    profile_version: int
    battery_pct: float


def batteries_on_shipments(conn: psycopg.Connection) -> list[BatteryReading]:
    """The last reported battery of every logger on a shipment now (status 'battery' is 0..1)."""
    return fetch_all(
        conn,
        BatteryReading,
        "SELECT d.org_id, d.key AS device_key, d.id AS device_id, a.shipment_key, s.profile_id,"
        " s.profile_version, (d.status->>'battery')::float8 * 100 AS battery_pct"
        " FROM device_assignments a JOIN devices d ON d.key = a.device_key"
        " JOIN shipments s ON s.key = a.shipment_key"
        " WHERE a.during @> now() AND jsonb_typeof(d.status->'battery') = 'number'",
    )
