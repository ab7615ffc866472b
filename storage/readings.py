"""Readings: the device directory ingest links batches with, the COPY writer, and lot queries."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from storage import copy_binary
from storage.copy_binary import Column

READING_COLUMNS = "org_id, device_key, shipment_key, seq, t, c, rh, flags"
FLAG_LATE = 1
FLAG_CLOCK_CORRECTED = 2
FLAG_DOOR_OPEN = 4


@dataclass(frozen=True, slots=True)
class Assignment:
    shipment_key: int
    start_ms: int
    end_ms: int  # exclusive; a very large number when open-ended


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """What ingest needs to know of a registered device to store its readings."""

    id: str
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


def load_devices(conn: psycopg.Connection, device_ids: list[str]) -> dict[str, KnownDevice]:
    """The registered devices among `device_ids`, with their assignment windows."""
    rows = conn.execute(
        "SELECT d.id, d.key, d.org_id, d.interval_s, d.last_seq, d.clock_offset_ms,"
        " coalesce(array_agg(a.shipment_key ORDER BY lower(a.during)) FILTER (WHERE a.id IS NOT NULL), '{}'),"
        " coalesce(array_agg((extract(epoch FROM lower(a.during)) * 1000)::bigint ORDER BY lower(a.during))"
        "   FILTER (WHERE a.id IS NOT NULL), '{}'),"
        " coalesce(array_agg((extract(epoch FROM upper(a.during)) * 1000)::bigint ORDER BY lower(a.during))"
        "   FILTER (WHERE a.id IS NOT NULL), '{}')"
        " FROM devices d LEFT JOIN device_assignments a ON a.device_key = d.key"
        " WHERE d.id = ANY(%s) GROUP BY d.key",
        (device_ids,),
    ).fetchall()
    found: dict[str, KnownDevice] = {}
    for dev_id, key, org, interval, last_seq, offset, shipments, starts, ends in rows:
        found[dev_id] = KnownDevice(
            id=dev_id,
            key=key,
            org_id=org,
            interval_s=interval,
            last_seq=last_seq,
            clock_offset_ms=offset,
            assignments=tuple(
                Assignment(int(s), int(a), int(b) if b is not None else _OPEN_END_MS)
                for s, a, b in zip(shipments, starts, ends, strict=True)
            ),
        )
    return found


@dataclass(slots=True)
class ReadingRows:
    """Reading rows as columns, ready for one binary COPY."""

    org_id: npt.NDArray[np.int16]
    device_key: npt.NDArray[np.int32]
    shipment_key: npt.NDArray[np.int32]  # -1 = not on a shipment (NULL)
    seq: npt.NDArray[np.int64]
    t_ms: npt.NDArray[np.int64]
    celsius: npt.NDArray[np.float32]
    rh: npt.NDArray[np.float32]  # NaN = not measured (NULL)
    flags: npt.NDArray[np.int16]

    def __len__(self) -> int:
        return len(self.t_ms)

    @staticmethod
    def concat(parts: list[ReadingRows]) -> ReadingRows:
        return ReadingRows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ReadingRows.__slots__)
        )


def encode_rows(rows: ReadingRows) -> bytes:
    return copy_binary.encode(
        [
            Column("int2", rows.org_id),
            Column("int4", rows.device_key),
            Column("int4", rows.shipment_key, rows.shipment_key < 0),
            Column("int8", rows.seq),
            Column("timestamptz", copy_binary.epoch_ms_to_pg(rows.t_ms)),
            Column("float4", rows.celsius),
            Column("float4", rows.rh, np.isnan(rows.rh)),
            Column("int2", rows.flags),
        ]
    )


def copy_rows(conn: psycopg.Connection, rows: ReadingRows, *, table: str = "readings") -> None:
    """One binary COPY of every row (in the caller's transaction)."""
    if not len(rows):
        return
    data = encode_rows(rows)
    with conn.cursor() as cur, cur.copy(
        f"COPY {table} ({READING_COLUMNS}) FROM STDIN (FORMAT binary)"  # table is ours, never input
    ) as copy:
        copy.write(data)


def lot_readings(
    conn: psycopg.Connection,
    *,
    shipment_keys: list[int],
    start: datetime | None,
    end: datetime | None,
    bucket: timedelta | None,
    limit: int = 100_000,
) -> list[dict[str, Any]]:
    """A lot's readings across its shipments, raw or bucketed.

    Buckets come from TimescaleDB's continuous aggregates where they can serve the request, from
    date_bin over the raw readings otherwise (always on plain PostgreSQL); both give the same
    numbers. The aggregates' real-time part covers readings newer than the last refresh; readings
    back-filled below it show in the buckets after the refresh policy's next run (5 minutes).
    """
    where = "r.shipment_key = ANY(%(keys)s)"
    params: dict[str, Any] = {"keys": shipment_keys, "limit": limit}
    if start is not None:
        where += " AND r.t >= %(start)s"
        params["start"] = start
    if end is not None:
        where += " AND r.t < %(end)s"
        params["end"] = end
    if bucket is None:
        rows = conn.execute(
            "SELECT r.t, d.id, s.id, r.c, r.rh, r.flags FROM readings r"
            " JOIN devices d ON d.key = r.device_key JOIN shipments s ON s.key = r.shipment_key"
            f" WHERE {where} ORDER BY r.t, d.id LIMIT %(limit)s",
            params,
        ).fetchall()
        return [
            {"t": t, "device": dev, "shipment": shp, "c": round(float(c), 3),
             "rh": None if rh is None else round(float(rh), 2), "late": bool(fl & FLAG_LATE)}
            for t, dev, shp, c, rh, fl in rows
        ]
    params["bucket"] = bucket
    rollup = bucket_source(conn, bucket=bucket, start=start, end=end)
    if rollup is None:
        # exact numeric sums, so the mean equals the continuous aggregates' to the last digit
        sql = (
            "SELECT date_bin(%(bucket)s, r.t, TIMESTAMPTZ '2000-01-01 00:00+00') AS b, d.id,"
            " round(sum(r.c::numeric) / count(*), 3)::float8, round(min(r.c)::numeric, 3)::float8,"
            " round(max(r.c)::numeric, 3)::float8, count(*) FROM readings r"
            f" JOIN devices d ON d.key = r.device_key WHERE {where}"
            " GROUP BY b, d.id ORDER BY b, d.id LIMIT %(limit)s"
        )
    else:
        sql = (
            "SELECT time_bucket(%(bucket)s, r.bucket, TIMESTAMPTZ '2000-01-01 00:00+00') AS b, d.id,"
            " round(sum(r.sum_c) / sum(r.n), 3)::float8, round(min(r.min_c)::numeric, 3)::float8,"
            f" round(max(r.max_c)::numeric, 3)::float8, sum(r.n)::int8 FROM {rollup} r"
            " JOIN devices d ON d.key = r.device_key WHERE "
            + where.replace("r.t ", "r.bucket ")
            + " GROUP BY b, d.id ORDER BY b, d.id LIMIT %(limit)s"
        )
    rows = conn.execute(sql, params).fetchall()
    # rounded in SQL, so both engines hand back the very same floats
    return [
        {"t": b, "device": dev, "c": mean, "min_c": mn, "max_c": mx, "n": n}
        for b, dev, mean, mn, mx, n in rows
    ]


# TimescaleDB's continuous aggregates (migration 090), coarsest first, with their bucket widths.
ROLLUPS = (("readings_1h", timedelta(hours=1)), ("readings_5m", timedelta(minutes=5)))


def bucket_source(
    conn: psycopg.Connection, *, bucket: timedelta, start: datetime | None, end: datetime | None
) -> str | None:
    """The continuous aggregate a bucketed read can be summed from, or None for the raw readings.

    A rollup serves when its width divides the bucket and the range starts and ends on its
    bucket edges (then its buckets hold exactly the readings the raw query would count). Plain
    PostgreSQL has no rollups: always None there, and the read runs date_bin over readings.
    """
    usable = [
        (name, width) for name, width in ROLLUPS
        if bucket % width == timedelta(0)
        and all(edge is None or _on_edge(edge, width) for edge in (start, end))
    ]
    if not usable:
        return None
    names = _rollups_of(conn)
    return next((name for name, _ in usable if name in names), None)


_ROLLUPS_SEEN: weakref.WeakKeyDictionary[psycopg.Connection, frozenset[str]] = weakref.WeakKeyDictionary()


def _rollups_of(conn: psycopg.Connection) -> frozenset[str]:
    """The rollups this connection's database has, looked up once per connection (a database
    keeps its engine for life: migrations refuse to switch it)."""
    known = _ROLLUPS_SEEN.get(conn)
    if known is None:
        found = conn.execute(
            "SELECT coalesce(array_agg(name), '{}') FROM unnest(%s::text[]) AS name"
            " WHERE to_regclass(name) IS NOT NULL",
            ([name for name, _ in ROLLUPS],),
        ).fetchone()
        known = frozenset(found[0]) if found else frozenset()
        _ROLLUPS_SEEN[conn] = known
    return known


def _on_edge(edge: datetime, width: timedelta) -> bool:
    if edge.tzinfo is None:  # the server reads it in its session time zone: let the raw query do so
        return False
    return edge.timestamp() % width.total_seconds() == 0
