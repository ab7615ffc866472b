"""Readings: the binary COPY writer, and the queries that read readings back (a lot's readings,
its legs for lot figures, an alert's logger around its excursion for the e-mail chart)."""

from __future__ import annotations

import itertools
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
SENSOR_COLUMNS = "lat, lon, shock_g"  # copied only when some row of the COPY has one
FLAG_LATE = 1
FLAG_CLOCK_CORRECTED = 2
FLAG_DOOR_OPEN = 4
FLAG_LIGHT = 8  # light inside the box: it was opened
# An edge summary (an overflowing outbox folded a bucket into its mean); its extremes are in
# `reading_extremes`. A high bit, so that flags for new sensor kinds can take the low ones.
FLAG_SUMMARY = 64


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
    # position (degrees) and shock (g), NaN where not reported; None: no row has any
    lat: npt.NDArray[np.float64] | None = None
    lon: npt.NDArray[np.float64] | None = None
    shock_g: npt.NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return len(self.t_ms)

    @property
    def has_sensors(self) -> bool:
        return self.lat is not None or self.lon is not None or self.shock_g is not None

    def sensor(self, name: str) -> npt.NDArray[np.floating[Any]]:
        """A sensor column, all NaN when no row has it."""
        value: npt.NDArray[np.floating[Any]] | None = getattr(self, name)
        if value is None:
            return np.full(len(self), np.nan, dtype=np.float32 if name == "shock_g" else np.float64)
        return value

    @staticmethod
    def concat(parts: list[ReadingRows]) -> ReadingRows:
        base = ReadingRows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ReadingRows.__slots__[:8])
        )
        if any(p.has_sensors for p in parts):
            base.lat = np.concatenate([p.sensor("lat") for p in parts])
            base.lon = np.concatenate([p.sensor("lon") for p in parts])
            base.shock_g = np.concatenate([p.sensor("shock_g") for p in parts]).astype(np.float32)
        return base


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
            *_sensor_columns(rows),
        ]
    )


def _sensor_columns(rows: ReadingRows) -> list[Column]:
    if not rows.has_sensors:
        return []
    lat, lon, shock = rows.sensor("lat"), rows.sensor("lon"), rows.sensor("shock_g")
    return [
        Column("float8", lat, np.isnan(lat)),
        Column("float8", lon, np.isnan(lon)),
        Column("float4", shock, np.isnan(shock)),
    ]


def copy_rows(conn: psycopg.Connection, rows: ReadingRows, *, table: str = "readings") -> None:
    """One binary COPY of every row (in the caller's transaction)."""
    if not len(rows):
        return
    data = encode_rows(rows)
    columns = f"{READING_COLUMNS}, {SENSOR_COLUMNS}" if rows.has_sensors else READING_COLUMNS
    with (
        conn.cursor() as cur,
        cur.copy(
            f"COPY {table} ({columns}) FROM STDIN (FORMAT binary)"  # table is ours, never input
        ) as copy,
    ):
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
            "SELECT r.t, d.id, s.id, r.c, r.rh, r.flags, r.lat, r.lon, r.shock_g FROM readings r"
            " JOIN devices d ON d.key = r.device_key JOIN shipments s ON s.key = r.shipment_key"
            f" WHERE {where} ORDER BY r.t, d.id LIMIT %(limit)s",
            params,
        ).fetchall()
        return [
            {
                "t": t,
                "device": dev,
                "shipment": shp,
                "c": round(float(c), 3),
                "rh": None if rh is None else round(float(rh), 2),
                "late": bool(fl & FLAG_LATE),
                "door": bool(fl & FLAG_DOOR_OPEN),
                "light": bool(fl & FLAG_LIGHT),
                "lat": lat,
                "lon": lon,
                "shock_g": None if shock is None else round(float(shock), 3),
            }
            for t, dev, shp, c, rh, fl, lat, lon, shock in rows
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
        rows = _rollup_rows(conn, rollup, bucket, where.replace("r.t ", "r.bucket "), params)
        return [
            {"t": b, "device": dev, "c": mean, "min_c": mn, "max_c": mx, "n": n}
            for b, dev, mean, mn, mx, n in rows
        ]
    rows = conn.execute(sql, params).fetchall()
    # rounded in SQL, so both engines hand back the very same floats
    return [
        {"t": b, "device": dev, "c": mean, "min_c": mn, "max_c": mx, "n": n}
        for b, dev, mean, mn, mx, n in rows
    ]


def _rollup_rows(
    conn: psycopg.Connection, rollup: str, bucket: timedelta, where: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Buckets summed from a continuous aggregate, rounded in SQL as the raw query rounds them.

    When the bucket is the rollup's own width, a rollup row already is a bucket of one logger on
    one shipment: read as it is, without re-grouping, and from the figures the hourly rollup
    stores rounded (a 30-day hourly chart of a 10-logger lot is 7,200 rows; grouping and numeric
    rounding at read time were most of the query). A logger on two of the lot's shipments within
    one bucket has two rows there; then, and only then, the rows are summed.
    """
    with conn.cursor(binary=True) as cur:  # times and floats parse faster from binary than text
        if bucket == dict(ROLLUPS)[rollup]:
            figures = ROUNDED.get(
                rollup, "round(r.sum_c / r.n, 3)::float8, round(r.min_c::numeric, 3)::float8,"
                " round(r.max_c::numeric, 3)::float8"
            )
            rows = cur.execute(
                f"SELECT r.bucket, d.id, {figures}, r.n::int8 FROM {rollup} r"
                f" JOIN devices d ON d.key = r.device_key WHERE {where}"
                " ORDER BY r.bucket, d.id LIMIT %(limit)s + 1",
                params,
            ).fetchall()
            if all(a[0] != b[0] or a[1] != b[1] for a, b in itertools.pairwise(rows)):
                return rows[: params["limit"]]
        return cur.execute(
            "SELECT time_bucket(%(bucket)s, r.bucket, TIMESTAMPTZ '2000-01-01 00:00+00') AS b, d.id,"
            " round(sum(r.sum_c) / sum(r.n), 3)::float8, round(min(r.min_c)::numeric, 3)::float8,"
            f" round(max(r.max_c)::numeric, 3)::float8, sum(r.n)::int8 FROM {rollup} r"
            f" JOIN devices d ON d.key = r.device_key WHERE {where}"
            " GROUP BY b, d.id ORDER BY b, d.id LIMIT %(limit)s",
            params,
        ).fetchall()


# TimescaleDB's continuous aggregates (migration 090), coarsest first, with their bucket widths.
ROLLUPS = (("readings_1h", timedelta(hours=1)), ("readings_5m", timedelta(minutes=5)))
# Rollups that store their rows' figures already rounded as a read returns them (migration 135).
ROUNDED = {"readings_1h": "r.mean_c_3, r.min_c_3, r.max_c_3"}


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


def last_reading_ms(conn: psycopg.Connection, *, device_id_prefix: str) -> int | None:
    """The newest reading time (epoch ms) of the devices whose id starts with the prefix, if any."""
    row = conn.execute(
        "SELECT (extract(epoch FROM max(r.t)) * 1000)::bigint FROM readings r"
        " JOIN devices d ON d.key = r.device_key WHERE d.id LIKE %s",
        (device_id_prefix.replace("%", r"\%").replace("_", r"\_") + "%",),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def store_extremes(
    conn: psycopg.Connection,
    device_key: npt.NDArray[np.int32],
    t_ms: npt.NDArray[np.int64],
    t_last_ms: npt.NDArray[np.int64],
    n: npt.NDArray[np.int32],
    min_c: npt.NDArray[np.float64],
    max_c: npt.NDArray[np.float64],
) -> None:
    """Record summary readings' extremes (a redelivered batch is deduplicated before this)."""
    conn.execute(
        "INSERT INTO reading_extremes (device_key, t, t_last, n, min_c, max_c)"
        " SELECT d, to_timestamp(t / 1000.0), to_timestamp(tl / 1000.0), n, lo, hi"
        " FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int4[], %s::float8[], %s::float8[])"
        " AS x(d, t, tl, n, lo, hi) ON CONFLICT (device_key, t) DO NOTHING",
        (device_key.tolist(), t_ms.tolist(), t_last_ms.tolist(), n.tolist(), min_c.tolist(), max_c.tolist()),
    )


def extremes_at(
    conn: psycopg.Connection, device_key: npt.NDArray[np.int32], t_ms: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(min °C, max °C) of the summary readings at these (device, time) pairs; NaN where none."""
    rows = conn.execute(
        "SELECT x.i, e.min_c, e.max_c FROM unnest(%s::int4[], %s::int8[]) WITH ORDINALITY AS x(d, t, i)"
        " JOIN reading_extremes e ON e.device_key = x.d AND e.t = to_timestamp(x.t / 1000.0)",
        (device_key.tolist(), t_ms.tolist()),
    ).fetchall()
    low = np.full(t_ms.size, np.nan)
    high = np.full(t_ms.size, np.nan)
    for i, lo, hi in rows:
        low[int(i) - 1], high[int(i) - 1] = float(lo), float(hi)
    return low, high


def judged_extremes(
    conn: psycopg.Connection,
    device_key: npt.NDArray[np.int32],
    t_ms: npt.NDArray[np.int64],
    temps_c: npt.NDArray[np.float64],
    flags: npt.NDArray[np.int16],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """The values the low and the high limits judge: each reading's own, and a summary's minimum
    and maximum; None (no query) when no reading is a summary, the usual case."""
    summary = (flags & FLAG_SUMMARY) != 0
    if not summary.any():
        return None
    lo, hi = extremes_at(conn, device_key[summary], t_ms[summary])
    low = np.asarray(temps_c, np.float64).copy()
    high = low.copy()
    low[summary] = np.where(np.isnan(lo), low[summary], np.minimum(lo, low[summary]))
    high[summary] = np.where(np.isnan(hi), high[summary], np.maximum(hi, high[summary]))
    return low, high


def alert_readings(
    conn: psycopg.Connection, *, alert_id: int, margin: timedelta = timedelta(minutes=30), limit: int = 5000
) -> tuple[list[float], list[float]]:
    """(epoch seconds, °C) of the alert's logger around its excursion, for the e-mail chart."""
    rows = conn.execute(
        "SELECT extract(epoch FROM r.t)::float8, r.c FROM alerts a JOIN readings r"
        " ON r.device_key = a.device_key AND r.org_id = a.org_id"
        " AND r.t >= coalesce(a.started_at, a.opened_at) - %s"
        " AND r.t <= coalesce(a.ended_at, a.opened_at) + %s"
        " WHERE a.id = %s ORDER BY r.t LIMIT %s",
        (margin, margin, alert_id, limit),
    ).fetchall()
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]


@dataclass(frozen=True, slots=True)
class LegReadings:
    """One shipment's loggers' readings, for lot figures and evidence."""

    shipment_key: int
    shipment_id: str
    profile_id: str
    profile_version: int
    loggers: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]


def lot_legs(conn: psycopg.Connection, *, org: int, shipment_keys: list[int]) -> list[LegReadings]:
    """Every shipment of a lot in time order, with each logger's readings (one per instant)."""
    shipments = conn.execute(
        "SELECT key, id, profile_id, profile_version FROM shipments WHERE org_id = %s AND key = ANY(%s)"
        " ORDER BY created_at, key",
        (org, shipment_keys),
    ).fetchall()
    legs: list[LegReadings] = []
    for key, shipment_id, profile_id, version in shipments:
        rows = conn.execute(
            "SELECT d.id, array_agg((extract(epoch FROM r.t) * 1000)::bigint ORDER BY r.t),"
            " array_agg(r.c ORDER BY r.t) FROM (SELECT DISTINCT ON (device_key, t) device_key, t, c"
            " FROM readings WHERE shipment_key = %s ORDER BY device_key, t) r"
            " JOIN devices d ON d.key = r.device_key GROUP BY d.id ORDER BY d.id",
            (key,),
        ).fetchall()
        legs.append(
            LegReadings(
                shipment_key=key,
                shipment_id=shipment_id,
                profile_id=profile_id,
                profile_version=int(version),
                loggers={
                    dev: (np.array(t, dtype=np.int64), np.array(c, dtype=np.float64)) for dev, t, c in rows
                },
            )
        )
    return legs
