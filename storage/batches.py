"""The batch ledger: one row per (device, seq) received, its late flag, and the gaps in each
device's sequence (data-loss events). Every function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import class_row

from storage.readings import FLAG_LATE
from storage.rows import fetch_all


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


class OpenGap(NamedTuple):
    """An open gap of a device's batch sequence (a tuple, so it still compares as one)."""

    from_seq: int
    to_seq: int
    missing: int
    recovered: int


def open_data_loss(conn: psycopg.Connection, device_key: int) -> list[OpenGap]:
    """Open gaps of a device, oldest first."""
    with conn.cursor(row_factory=class_row(OpenGap)) as cur:
        return cur.execute(
            "SELECT from_seq, to_seq, missing, recovered FROM data_loss_events"
            " WHERE device_key = %s AND resolved_at IS NULL ORDER BY from_seq",
            (device_key,),
        ).fetchall()


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


@dataclass(frozen=True, slots=True)
class DataLoss:
    """A gap in a device's batch sequence, with the shipment the device was on when it was found."""

    event_id: int
    org_id: int
    device_key: int
    device_id: str
    shipment_key: int | None
    from_seq: int
    to_seq: int
    missing: int
    recovered: int
    resolved: bool


def data_loss_to_alert(conn: psycopg.Connection, *, limit: int = 500) -> list[DataLoss]:
    """Open gaps with no alert yet, and resolved gaps whose alert is still open."""
    return fetch_all(
        conn,
        DataLoss,
        "SELECT e.id AS event_id, e.org_id, e.device_key, d.id AS device_id,"
        " (SELECT a.shipment_key FROM device_assignments a WHERE a.device_key = e.device_key"
        "   AND a.during @> e.detected_at LIMIT 1) AS shipment_key,"
        " e.from_seq, e.to_seq, e.missing, e.recovered, e.resolved_at IS NOT NULL AS resolved"
        " FROM data_loss_events e JOIN devices d ON d.key = e.device_key"
        " LEFT JOIN alerts al ON al.org_id = e.org_id AND al.episode_key = 'loss:' || e.id"
        " WHERE (e.resolved_at IS NULL AND al.id IS NULL)"
        "    OR (e.resolved_at IS NOT NULL AND al.state IN ('open', 'acknowledged'))"
        " ORDER BY e.id LIMIT %s",
        (limit,),
    )
