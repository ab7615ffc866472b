"""Batches refused (dead letters, with the reason) and batches held for devices not registered
yet (quarantine), until ingest releases them through its normal path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from storage.rows import fetch_all


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A rejected batch or set of readings, with its reason and (bounded) raw bytes."""

    topic: str
    device_id: str | None  # as the topic or batch named it: the device's MQTT name
    reason: str
    detail: str
    payload: bytes
    payload_size: int
    received_ms: int


def insert_dead_letters(conn: psycopg.Connection, letters: Sequence[DeadLetterRow]) -> None:
    """Store dead letters and bump the dead-letter counters of the registered devices they name."""
    if not letters:
        return
    conn.execute(
        "INSERT INTO dead_letters (received_at, topic, device_id, org_id, reason, detail, payload,"
        " payload_size)"
        " SELECT to_timestamp(u.r / 1000.0), u.tp, u.dv, d.org_id, u.rs, u.dt, u.p, u.n"
        " FROM unnest(%s::int8[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[],"
        " %s::int4[]) AS u(r, tp, dv, rs, dt, p, n) LEFT JOIN devices d ON d.mqtt_name = u.dv",
        (
            [d.received_ms for d in letters],
            [d.topic for d in letters],
            [d.device_id for d in letters],
            [d.reason for d in letters],
            [d.detail for d in letters],
            [d.payload for d in letters],
            [d.payload_size for d in letters],
        ),
    )
    per_device: dict[str, tuple[int, int, str]] = {}
    for d in letters:
        if d.device_id is not None:
            count, _, _ = per_device.get(d.device_id, (0, 0, ""))
            per_device[d.device_id] = (count + 1, d.received_ms, d.reason)
    if per_device:
        ids = sorted(per_device)
        conn.execute(
            "UPDATE devices SET dead_letter_count = dead_letter_count + u.n,"
            " last_dead_letter_at = to_timestamp(u.r / 1000.0), last_dead_letter_reason = u.rs"
            " FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::text[]) AS u(id, n, r, rs)"
            " WHERE devices.mqtt_name = u.id",
            (
                ids,
                [per_device[i][0] for i in ids],
                [per_device[i][1] for i in ids],
                [per_device[i][2] for i in ids],
            ),
        )


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """A whole batch of a device nobody has registered (yet)."""

    topic: str
    device_id: str  # the MQTT name it arrived under; released once a device has that name
    seq: int | None
    payload: bytes
    received_ms: int


def insert_quarantine(conn: psycopg.Connection, held: Sequence[QuarantineRow]) -> None:
    if not held:
        return
    conn.execute(
        "INSERT INTO quarantine (received_at, topic, device_id, seq, payload, payload_size)"
        " SELECT to_timestamp(r / 1000.0), tp, dv, s, p, length(p)"
        " FROM unnest(%s::int8[], %s::text[], %s::text[], %s::int8[], %s::bytea[])"
        " AS u(r, tp, dv, s, p)",
        (
            [h.received_ms for h in held],
            [h.topic for h in held],
            [h.device_id for h in held],
            [h.seq for h in held],
            [h.payload for h in held],
        ),
    )


@dataclass(frozen=True, slots=True)
class HeldBatch:
    """A quarantined payload whose device is now registered, ready to go through ingest again."""

    id: int
    topic: str
    payload: bytes
    received_ms: int


def take_releasable(conn: psycopg.Connection, *, limit: int = 500) -> list[HeldBatch]:
    """Held payloads of devices that are registered now, locked so one worker releases each."""
    return fetch_all(
        conn,
        HeldBatch,
        "SELECT q.id, q.topic, q.payload, (extract(epoch FROM q.received_at) * 1000)::bigint AS received_ms"
        " FROM quarantine q WHERE q.released_at IS NULL"
        " AND EXISTS (SELECT 1 FROM devices d WHERE d.mqtt_name = q.device_id)"
        " ORDER BY q.id LIMIT %s FOR UPDATE OF q SKIP LOCKED",
        (limit,),
    )


def mark_released(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute("UPDATE quarantine SET released_at = now() WHERE id = ANY(%s)", (list(ids),))


def held_count(conn: psycopg.Connection, device_id: str | None = None) -> int:
    """Batches still held in quarantine (for one device, or all)."""
    if device_id is None:
        row = conn.execute("SELECT count(*) FROM quarantine WHERE released_at IS NULL").fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM quarantine WHERE released_at IS NULL AND device_id = %s",
            (device_id,),
        ).fetchone()
    return int(row[0]) if row else 0
