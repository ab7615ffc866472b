"""Ingest's SQL beyond the readings COPY: batch dedupe, dead letters, quarantine, data-loss events,
device state, status and the rules work queue. Every function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

from storage.readings import FLAG_LATE, Assignment, KnownDevice

_OPEN_END_MS = 1 << 62
RULES_CHANNEL = "rules"
RELEASE_CHANNEL = "ingest_release"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A registered device's row as ingest reads it (locked or not: see lock_devices, read_devices)."""

    id: str
    key: int
    org_id: int
    interval_s: int
    last_seq: int | None
    clock_offset_ms: int | None


def lock_devices(conn: psycopg.Connection, device_ids: Sequence[str]) -> dict[str, DeviceState]:
    """The registered devices among `device_ids`, row-locked in key order.

    The lock serialises two ingest workers that hold batches of the same device, so `last_seq`
    (and the gaps computed from it) is exact; key order keeps two workers from deadlocking.
    It is FOR NO KEY UPDATE because ingest changes no key column: a FOR UPDATE lock would also
    block every foreign-key check on the device (rule state, alerts) for the whole group.
    """
    if not device_ids:
        return {}
    rows = conn.execute(
        "SELECT id, key, org_id, interval_s, last_seq, clock_offset_ms FROM devices"
        " WHERE id = ANY(%s) ORDER BY key FOR NO KEY UPDATE",
        (list(device_ids),),
    ).fetchall()
    return {r[0]: DeviceState(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}


def read_devices(conn: psycopg.Connection, device_ids: Sequence[str]) -> dict[str, DeviceState]:
    """The registered devices among `device_ids`, read without a lock.

    Key, organisation and clock offset are what the copy stage of a group needs; `last_seq` is
    only a hint here (lock_devices reads it exactly before it is used for accounting).
    """
    if not device_ids:
        return {}
    rows = conn.execute(
        "SELECT id, key, org_id, interval_s, last_seq, clock_offset_ms FROM devices"
        " WHERE id = ANY(%s)",
        (list(device_ids),),
    ).fetchall()
    return {r[0]: DeviceState(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}


def mark_late(
    conn: psycopg.Connection,
    *,
    device_keys: Sequence[int],
    seqs: Sequence[int],
    from_ms: Sequence[int],
    to_ms: Sequence[int],
) -> None:
    """Flag batches of this transaction late, with their readings (within [from_ms, to_ms]).

    Needed when a batch turns out to be below its device's highest number only once the device is
    locked (another transaction committed newer batches after this one copied its readings).
    """
    if not seqs:
        return
    conn.execute(
        "UPDATE batches b SET late = true FROM unnest(%s::int4[], %s::int8[]) AS u(d, s)"
        " WHERE b.device_key = u.d AND b.seq = u.s",
        (list(device_keys), list(seqs)),
    )
    conn.execute(
        "UPDATE readings r SET flags = r.flags | %s::int2"
        " FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int8[]) AS u(d, s, f, t)"
        " WHERE r.device_key = u.d AND r.seq = u.s"
        " AND r.t BETWEEN to_timestamp((u.f - 1) / 1000.0) AND to_timestamp((u.t + 1) / 1000.0)",
        (FLAG_LATE, list(device_keys), list(seqs), list(from_ms), list(to_ms)),
    )


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
        id=state.id,
        key=state.key,
        org_id=state.org_id,
        interval_s=state.interval_s,
        last_seq=state.last_seq,
        assignments=assignments,
        clock_offset_ms=state.clock_offset_ms,
    )


@dataclass(frozen=True, slots=True)
class BatchRows:
    """Candidate rows of the `batches` table, one per batch of the group (columns)."""

    device_key: npt.NDArray[np.int32]
    seq: npt.NDArray[np.int64]
    org_id: npt.NDArray[np.int16]
    received_ms: npt.NDArray[np.int64]
    sent_ms: npt.NDArray[np.int64]
    readings: npt.NDArray[np.int32]
    clock_offset_ms: npt.NDArray[np.int64]
    late: npt.NDArray[np.bool_]
    extras: list[str | None]  # JSON text of the batch's per-reading extras


def insert_batches(conn: psycopg.Connection, rows: BatchRows) -> set[tuple[int, int]]:
    """Insert the batches not seen before; return their (device_key, seq).

    A batch already present (a redelivery) is skipped by the primary key, so the caller copies the
    readings of new batches only and the hot path stays a plain COPY.
    """
    if not len(rows.seq):
        return set()
    cur = conn.execute(
        "INSERT INTO batches (device_key, seq, org_id, received_at, sent_at, readings,"
        " clock_offset_ms, late, extras)"
        " SELECT d, s, o, to_timestamp(r / 1000.0), to_timestamp(t / 1000.0), n, c, l, e::jsonb"
        " FROM unnest(%s::int4[], %s::int8[], %s::int2[], %s::int8[], %s::int8[], %s::int4[],"
        " %s::int8[], %s::bool[], %s::text[]) AS u(d, s, o, r, t, n, c, l, e)"
        " ON CONFLICT (device_key, seq) DO NOTHING RETURNING device_key, seq",
        (
            rows.device_key.tolist(),
            rows.seq.tolist(),
            rows.org_id.tolist(),
            rows.received_ms.tolist(),
            rows.sent_ms.tolist(),
            rows.readings.tolist(),
            rows.clock_offset_ms.tolist(),
            rows.late.tolist(),
            rows.extras,
        ),
    )
    return {(int(d), int(s)) for d, s in cur.fetchall()}


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A rejected batch or set of readings, with its reason and (bounded) raw bytes."""

    topic: str
    device_id: str | None
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
        " %s::int4[]) AS u(r, tp, dv, rs, dt, p, n) LEFT JOIN devices d ON d.id = u.dv",
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
            " WHERE devices.id = u.id",
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
    device_id: str
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
    rows = conn.execute(
        "SELECT q.id, q.topic, q.payload, (extract(epoch FROM q.received_at) * 1000)::bigint"
        " FROM quarantine q WHERE q.released_at IS NULL"
        " AND EXISTS (SELECT 1 FROM devices d WHERE d.id = q.device_id)"
        " ORDER BY q.id LIMIT %s FOR UPDATE OF q SKIP LOCKED",
        (limit,),
    ).fetchall()
    return [HeldBatch(int(i), t, bytes(p), int(r)) for i, t, p, r in rows]


def mark_released(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute("UPDATE quarantine SET released_at = now() WHERE id = ANY(%s)", (list(ids),))


def release_quarantine(conn: psycopg.Connection, device_id: str) -> int:
    """Ask ingest to release the batches held for a device that has just been registered.

    Returns how many held batches the device has. The ingest service moves them into readings
    through its normal decode/validate/link path: it polls for held batches of registered devices
    every second, and this NOTIFY wakes it at once. Call it after the device's registration commits.
    """
    row = conn.execute(
        "SELECT count(*) FROM quarantine WHERE device_id = %s AND released_at IS NULL",
        (device_id,),
    ).fetchone()
    held = int(row[0]) if row else 0
    if held:
        conn.execute("SELECT pg_notify(%s, %s)", (RELEASE_CHANNEL, device_id))
    return held


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


@dataclass(frozen=True, slots=True)
class SeqGap:
    org_id: int
    device_key: int
    from_seq: int
    to_seq: int


def record_gaps(conn: psycopg.Connection, gaps: Sequence[SeqGap]) -> None:
    if not gaps:
        return
    conn.execute(
        "INSERT INTO data_loss_events (org_id, device_key, from_seq, to_seq, missing)"
        " SELECT o, d, f, t, t - f + 1 FROM unnest(%s::int2[], %s::int4[], %s::int8[], %s::int8[])"
        " AS u(o, d, f, t)",
        (
            [g.org_id for g in gaps],
            [g.device_key for g in gaps],
            [g.from_seq for g in gaps],
            [g.to_seq for g in gaps],
        ),
    )


def recover_gaps(conn: psycopg.Connection, device_keys: Sequence[int], seqs: Sequence[int]) -> None:
    """Count late batches that fill an open gap; a gap whose batches all arrived is resolved."""
    if not seqs:
        return
    conn.execute(
        "UPDATE data_loss_events e SET recovered = e.recovered + f.n,"
        " resolved_at = CASE WHEN e.recovered + f.n >= e.missing THEN now() END"
        " FROM (SELECT e2.id, count(*) AS n FROM data_loss_events e2"
        "       JOIN unnest(%s::int4[], %s::int8[]) AS u(d, s)"
        "         ON e2.device_key = u.d AND u.s BETWEEN e2.from_seq AND e2.to_seq"
        "       WHERE e2.resolved_at IS NULL GROUP BY e2.id) AS f"
        " WHERE e.id = f.id",
        (list(device_keys), list(seqs)),
    )


def open_data_loss(conn: psycopg.Connection, device_key: int) -> list[tuple[int, int, int, int]]:
    """Open gaps of a device: (from_seq, to_seq, missing, recovered)."""
    rows = conn.execute(
        "SELECT from_seq, to_seq, missing, recovered FROM data_loss_events"
        " WHERE device_key = %s AND resolved_at IS NULL ORDER BY from_seq",
        (device_key,),
    ).fetchall()
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in rows]


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


@dataclass(frozen=True, slots=True)
class RuleWork:
    """Readings of one device (and shipment, or none) that the rules engine must look at."""

    org_id: npt.NDArray[np.int16]
    device_key: npt.NDArray[np.int32]
    shipment_key: npt.NDArray[np.int32]  # -1 = none
    from_ms: npt.NDArray[np.int64]
    to_ms: npt.NDArray[np.int64]
    late: npt.NDArray[np.bool_]
    min_c: npt.NDArray[np.float32]
    max_c: npt.NDArray[np.float32]
    min_rh: npt.NDArray[np.float32]  # NaN = no humidity in the range
    max_rh: npt.NDArray[np.float32]


def enqueue_rules(conn: psycopg.Connection, work: RuleWork) -> int:
    """Queue rule evaluations in the readings' transaction, then NOTIFY (delivered on commit)."""
    n = len(work.device_key)
    if not n:
        return 0
    conn.execute(
        "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, late, min_c, max_c,"
        " min_rh, max_rh)"
        " SELECT o, d, nullif(s, -1), to_timestamp(f / 1000.0), to_timestamp(t / 1000.0), l, lc, hc,"
        " nullif(lr, 'NaN'), nullif(hr, 'NaN')"
        " FROM unnest(%s::int2[], %s::int4[], %s::int4[], %s::int8[], %s::int8[], %s::bool[],"
        " %s::float4[], %s::float4[], %s::float4[], %s::float4[]) AS u(o, d, s, f, t, l, lc, hc, lr, hr)",
        (
            work.org_id.tolist(),
            work.device_key.tolist(),
            work.shipment_key.tolist(),
            work.from_ms.tolist(),
            work.to_ms.tolist(),
            work.late.tolist(),
            work.min_c.tolist(),
            work.max_c.tolist(),
            work.min_rh.tolist(),
            work.max_rh.tolist(),
        ),
    )
    conn.execute(f"NOTIFY {RULES_CHANNEL}")
    return n


def update_status(
    conn: psycopg.Connection, *, device_id: str, status: dict[str, Any], received_ms: int
) -> bool:
    """Store a device's retained status; an older message never overwrites a newer one."""
    cur = conn.execute(
        "UPDATE devices SET status = %s::jsonb, status_at = to_timestamp(%s / 1000.0)"
        " WHERE id = %s AND (status_at IS NULL OR status_at <= to_timestamp(%s / 1000.0))",
        (Jsonb(status), received_ms, device_id, received_ms),
    )
    return cur.rowcount > 0


def ingest_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Row counts of the ingest tables (for tests, benchmarks and the health view)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM batches),"
        " (SELECT count(*) FROM dead_letters), (SELECT count(*) FROM quarantine"
        "  WHERE released_at IS NULL), (SELECT count(*) FROM data_loss_events)"
    ).fetchone()
    assert row is not None
    keys = ("readings", "batches", "dead_letters", "held", "data_loss_events")
    return {k: int(v) for k, v in zip(keys, row, strict=True)}
