"""One series (a logger on a shipment) as the rules runner evaluates it: the engine state it
carries between evaluations, locked while in use, and its new readings, fetched for many series at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import psycopg
from psycopg.rows import dict_row

from storage.readings import FLAG_DOOR_OPEN, FLAG_LIGHT, judged_extremes


@dataclass(frozen=True, slots=True)
class SeriesContext:
    """The shipment's profile and the series' carried state (None: evaluate from the start)."""

    profile_id: str
    profile_version: int
    state: dict[str, Any] | None
    last_ms: int | None
    outside_s: float = 0.0
    logger_started_ms: int | None = None  # when the logger says it started logging (its status)
    mkt_acc: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SeriesBatch:
    """Many series' readings fetched in one query: row ranges per (shipment, device)."""

    shipment_key: npt.NDArray[np.int32]
    device_key: npt.NDArray[np.int32]
    times_ms: npt.NDArray[np.int64]
    temps_c: npt.NDArray[np.float64]
    rh_pct: npt.NDArray[np.float64]
    door_open: npt.NDArray[np.bool_]
    light: npt.NDArray[np.bool_]
    shock_g: npt.NDArray[np.float64]  # NaN = not measured
    # What the low and the high limits judge where edge summaries are among the readings (their
    # minimum and maximum); None when none is, and then both are `temps_c`.
    judged: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None

    def ranges(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(shipment, device) -> (first row, end row); rows are sorted by series, then time."""
        if self.times_ms.size == 0:
            return {}
        change = np.flatnonzero((np.diff(self.shipment_key) != 0) | (np.diff(self.device_key) != 0)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [self.times_ms.size]))
        return {
            (int(self.shipment_key[a]), int(self.device_key[a])): (int(a), int(b))
            for a, b in zip(starts, ends, strict=True)
        }


def lock_and_load(
    conn: psycopg.Connection, keys: list[tuple[int, int]]
) -> dict[tuple[int, int], SeriesContext]:
    """Lock many series (in key order, so workers never deadlock) and read their contexts."""
    ordered = sorted(keys)
    shipments = [k[0] for k in ordered]
    devices = [k[1] for k in ordered]
    conn.execute(
        "SELECT count(pg_advisory_xact_lock(s, d)) FROM"
        " (SELECT s, d FROM unnest(%s::int[], %s::int[]) AS w(s, d) ORDER BY s, d) AS x",
        (shipments, devices),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT w.s, w.d, sh.profile_id, sh.profile_version, r.state, r.last_ms,"
            " coalesce(r.outside_s, 0)::float8 AS outside_s, r.mkt_acc,"
            " CASE WHEN jsonb_typeof(dv.status -> 'started_ms') = 'number'"
            "      THEN (dv.status ->> 'started_ms')::float8::int8 END AS logger_started_ms"
            " FROM unnest(%s::int[], %s::int[]) AS w(s, d) JOIN shipments sh ON sh.key = w.s"
            " JOIN devices dv ON dv.key = w.d"
            " LEFT JOIN rule_series_state r ON r.shipment_key = w.s AND r.device_key = w.d",
            (shipments, devices),
        ).fetchall()
    return {(r.pop("s"), r.pop("d")): SeriesContext(**r) for r in rows}


def logger_started_ms(conn: psycopg.Connection, *, shipment_key: int, device_key: int) -> int | None:
    """Where the rules anchored the series' start delay (the logger's start), if it says."""
    row = conn.execute(
        "SELECT (state ->> 'logger_started_ms')::int8 FROM rule_series_state"
        " WHERE shipment_key = %s AND device_key = %s"
        " AND jsonb_typeof(state -> 'logger_started_ms') = 'number'",
        (shipment_key, device_key),
    ).fetchone()
    return None if row is None else int(row[0])


_PACKED = np.dtype([("t", ">i8"), ("c", ">f8"), ("rh", ">f8"), ("f", ">i2"), ("g", ">f4")])


def readings_of_many(
    conn: psycopg.Connection, after: dict[tuple[int, int], int | None], until: dict[tuple[int, int], int]
) -> SeriesBatch:
    """Readings of many series after each one's own point (None: from the start) up to the end of
    the work claimed for it, one per instant.

    The upper bound matters: readings committed after the work was claimed belong to queue rows
    still waiting; reading them now would leave those rows looking like late data later, and
    late data means a re-evaluation from the series' first reading.

    Each series comes back as one row: its readings packed in time order as fixed-width records
    of binary send forms, which numpy reads without any per-reading Python.
    """
    keys = sorted(after)
    floor = -62135596800000  # year 1
    afters = [floor if (a := after[k]) is None else a for k in keys]
    # One index range scan of (device_key, t) per series, each within that series' own bounds: a
    # join over all series at once is planned from their widest common range, and one series far
    # behind (a logger back-filling days of outbox) turned it into a scan of the whole table. The
    # constant lower bound lets a hypertable skip chunks older than every series' point. The
    # shipment is compared with IS NOT DISTINCT FROM so that it cannot steer the scan to the
    # (shipment_key, t) index: a shipment with a hundred loggers would be read a hundred times.
    rows = conn.execute(
        "SELECT w.s, w.d, x.packed"
        " FROM unnest(%s::int[], %s::int[], %s::int8[], %s::int8[]) AS w(s, d, after, until)"
        " CROSS JOIN LATERAL (SELECT string_agg(int8send((extract(epoch FROM r.t) * 1000)::int8)"
        "  || float8send(r.c::float8) || float8send(coalesce(r.rh, 'NaN')::float8) || int2send(r.flags)"
        "  || float4send(coalesce(r.shock_g, 'NaN')::float4),"
        "  ''::bytea ORDER BY r.t) AS packed FROM readings r"
        "  WHERE r.device_key = w.d AND r.shipment_key IS NOT DISTINCT FROM w.s"
        "  AND r.t > to_timestamp(w.after / 1000.0) AND r.t <= to_timestamp(w.until / 1000.0)"
        "  AND r.t > to_timestamp(%s / 1000.0)) AS x"
        " WHERE x.packed IS NOT NULL ORDER BY w.s, w.d",
        (
            [k[0] for k in keys],
            [k[1] for k in keys],
            afters,
            [until[k] for k in keys],
            min(afters),
        ),
    ).fetchall()
    packed = np.frombuffer(b"".join(r[2] for r in rows), dtype=_PACKED)
    counts = [len(r[2]) // _PACKED.itemsize for r in rows]
    shipment = np.repeat(np.array([r[0] for r in rows], dtype=np.int32), counts)
    device = np.repeat(np.array([r[1] for r in rows], dtype=np.int32), counts)
    times = packed["t"].astype(np.int64)
    # A repeated instant (a duplicated send under another seq) keeps one reading.
    keep = np.ones(times.size, dtype=bool)
    keep[1:] = (np.diff(times) != 0) | (np.diff(shipment) != 0) | (np.diff(device) != 0)
    flags = packed["f"][keep].astype(np.int16)
    temps = packed["c"].astype(np.float64)[keep]
    return SeriesBatch(
        shipment_key=shipment[keep],
        device_key=device[keep],
        times_ms=times[keep],
        temps_c=temps,
        rh_pct=packed["rh"].astype(np.float64)[keep],
        door_open=(flags & FLAG_DOOR_OPEN) != 0,
        light=(flags & FLAG_LIGHT) != 0,
        shock_g=packed["g"].astype(np.float64)[keep],
        judged=judged_extremes(conn, device[keep], times[keep], temps, flags),
    )


@dataclass(frozen=True, slots=True)
class SeriesStateRow:
    org_id: int
    shipment_key: int
    device_key: int
    profile_id: str
    profile_version: int
    state: dict[str, Any]
    last_ms: int | None
    at_rest: bool = False
    hot_high_c: float | None = None
    hot_low_c: float | None = None
    hot_high_rh: float | None = None
    hot_low_rh: float | None = None
    outside_s: float = 0.0  # time outside the profile's labelled range, for the lot's budget
    mkt_acc: dict[str, Any] | None = None  # the running MKT, and what a lot's MKT joins:
    mkt_log_mean: float | None = None
    mkt_w_ms: float | None = None
    mkt_dhr_k: float | None = None


def forget(conn: psycopg.Connection, keys: list[tuple[int, int]]) -> None:
    """Drop the engine state of series (shipment, device) that no longer have any reading."""
    if keys:
        conn.execute(
            "DELETE FROM rule_series_state r USING unnest(%s::int[], %s::int[]) AS w(s, d)"
            " WHERE r.shipment_key = w.s AND r.device_key = w.d",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )


def save_states(conn: psycopg.Connection, rows: list[SeriesStateRow]) -> None:
    """Store many series' engine states in one statement (one JSON document, parsed by the server)."""
    if not rows:
        return
    doc = orjson.dumps(
        [
            {
                "s": r.shipment_key,
                "d": r.device_key,
                "o": r.org_id,
                "p": r.profile_id,
                "v": r.profile_version,
                "state": r.state,
                "last": r.last_ms,
                "rest": r.at_rest,
                "hh": r.hot_high_c,
                "hl": r.hot_low_c,
                "rh": r.hot_high_rh,
                "rl": r.hot_low_rh,
                "out": r.outside_s,
                "macc": r.mkt_acc,
                "mlm": r.mkt_log_mean,
                "mw": r.mkt_w_ms,
                "mdhr": r.mkt_dhr_k,
            }
            for r in rows
        ]
    ).decode()
    conn.execute(
        "INSERT INTO rule_series_state (shipment_key, device_key, org_id, profile_id, profile_version,"
        " state, last_ms, at_rest, hot_high_c, hot_low_c, hot_high_rh, hot_low_rh, outside_s,"
        " mkt_acc, mkt_log_mean, mkt_w_ms, mkt_dhr_k)"
        " SELECT (x->>'s')::int, (x->>'d')::int, (x->>'o')::smallint, x->>'p', (x->>'v')::int, x->'state',"
        " (x->>'last')::bigint, (x->>'rest')::bool, (x->>'hh')::real, (x->>'hl')::real, (x->>'rh')::real,"
        " (x->>'rl')::real, (x->>'out')::float8, nullif(x->'macc', 'null'::jsonb), (x->>'mlm')::float8,"
        " (x->>'mw')::float8, (x->>'mdhr')::float8 FROM jsonb_array_elements(%s::jsonb) AS x"
        " ON CONFLICT (shipment_key, device_key) DO UPDATE SET state = EXCLUDED.state,"
        " last_ms = EXCLUDED.last_ms, profile_id = EXCLUDED.profile_id, at_rest = EXCLUDED.at_rest,"
        " hot_high_c = EXCLUDED.hot_high_c, hot_low_c = EXCLUDED.hot_low_c,"
        " hot_high_rh = EXCLUDED.hot_high_rh, hot_low_rh = EXCLUDED.hot_low_rh,"
        " outside_s = EXCLUDED.outside_s, mkt_acc = EXCLUDED.mkt_acc,"
        " mkt_log_mean = EXCLUDED.mkt_log_mean, mkt_w_ms = EXCLUDED.mkt_w_ms, mkt_dhr_k = EXCLUDED.mkt_dhr_k,"
        " profile_version = EXCLUDED.profile_version,"
        " evaluations = rule_series_state.evaluations + 1, updated_at = now()",
        (doc,),
    )
