"""What the rules runner reads and writes: queued work, series readings, carried engine state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import psycopg

from storage.readings import FLAG_DOOR_OPEN


@dataclass(frozen=True, slots=True)
class SeriesWork:
    """Readings of one logger on one shipment changed between `from_ms` and `to_ms`."""

    org_id: int
    device_key: int
    shipment_key: int
    from_ms: int
    to_ms: int
    late: bool


def queue_head(conn: psycopg.Connection) -> int:
    """The newest queued id now: a pass that stops there cannot be kept busy by new arrivals."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM rule_queue").fetchone()
    return int(row[0]) if row else 0


_FAST_LANE = (
    " AND (q.late OR r.shipment_key IS NULL OR NOT r.at_rest OR q.max_c >= r.hot_high_c"
    " OR q.min_c <= r.hot_low_c OR q.max_rh >= r.hot_high_rh OR q.min_rh <= r.hot_low_rh"
    " OR q.max_c IS NULL)"
)


def take_work(
    conn: psycopg.Connection, *, limit: int = 1000, up_to: int | None = None, fast_lane: bool = False
) -> list[SeriesWork]:
    """Claim queued work inside the caller's transaction (rows return if it rolls back).

    Several rows for the same series fold into one: the earliest start, the latest end, late if any.
    In the fast lane only work that could change an alert now is taken: late data, a new series,
    a series not at rest, or a range whose extremes reach the series' hot thresholds.
    """
    # Every queued row of a picked series goes too: one evaluation covers all its new readings,
    # and a row left behind would later look like late data and force a full re-evaluation.
    rows = conn.execute(
        "WITH picked AS (SELECT DISTINCT shipment_key, device_key FROM (SELECT q.shipment_key, q.device_key"
        " FROM rule_queue q LEFT JOIN rule_series_state r"
        " ON r.shipment_key = q.shipment_key AND r.device_key = q.device_key"
        " WHERE q.shipment_key IS NOT NULL AND q.id <= %(head)s"
        + (_FAST_LANE if fast_lane else "")
        + " ORDER BY q.id LIMIT %(limit)s FOR UPDATE OF q SKIP LOCKED) AS first)"
        " DELETE FROM rule_queue q USING picked p"
        " WHERE q.shipment_key = p.shipment_key AND q.device_key = p.device_key AND q.id <= %(head)s"
        " RETURNING q.org_id, q.device_key, q.shipment_key, (extract(epoch FROM q.from_t) * 1000)::bigint,"
        " (extract(epoch FROM q.to_t) * 1000)::bigint, q.late",
        {"head": up_to if up_to is not None else (1 << 62), "limit": limit},
    ).fetchall()
    if not fast_lane:
        conn.execute(
            "DELETE FROM rule_queue WHERE id IN (SELECT id FROM rule_queue WHERE shipment_key IS NULL"
            " FOR UPDATE SKIP LOCKED LIMIT %s)",
            (limit,),
        )
    folded: dict[tuple[int, int], SeriesWork] = {}
    for org, device, shipment, start, end, late in rows:
        key = (shipment, device)
        prev = folded.get(key)
        if prev is None:
            folded[key] = SeriesWork(org, device, shipment, int(start), int(end), bool(late))
        else:
            folded[key] = SeriesWork(
                org,
                device,
                shipment,
                min(prev.from_ms, int(start)),
                max(prev.to_ms, int(end)),
                prev.late or bool(late),
            )
    return list(folded.values())


@dataclass(frozen=True, slots=True)
class SeriesContext:
    """The shipment's profile and the series' carried state (None: evaluate from the start)."""

    profile_id: str
    profile_version: int
    state: dict[str, Any] | None
    last_ms: int | None
    outside_s: float = 0.0


def open_episode_alerts(conn: psycopg.Connection, *, org_id: int, prefix: str) -> dict[str, tuple[int, str]]:
    """Alerts of a series not yet resolved: episode key -> (alert id, state)."""
    rows = conn.execute(
        "SELECT episode_key, id, state FROM alerts WHERE org_id = %s AND episode_key LIKE %s"
        " AND state IN ('open', 'acknowledged')",
        (org_id, prefix.replace("%", r"\%") + "%"),
    ).fetchall()
    return {r[0]: (int(r[1]), r[2]) for r in rows}


@dataclass(frozen=True, slots=True)
class SilentDevice:
    org_id: int
    device_key: int
    device_id: str
    shipment_key: int
    interval_s: int
    last_seen_ms: int | None


def devices_on_shipments(conn: psycopg.Connection) -> list[tuple[SilentDevice, str, int]]:
    """Every logger currently assigned to a shipment, with the shipment's profile (id, version)."""
    rows = conn.execute(
        "SELECT d.org_id, d.key, d.id, a.shipment_key, d.interval_s,"
        " (extract(epoch FROM coalesce(d.last_seen_at, lower(a.during))) * 1000)::bigint,"
        " s.profile_id, s.profile_version"
        " FROM device_assignments a JOIN devices d ON d.key = a.device_key"
        " JOIN shipments s ON s.key = a.shipment_key WHERE a.during @> now()"
    ).fetchall()
    return [(SilentDevice(r[0], r[1], r[2], r[3], r[4], r[5]), r[6], int(r[7])) for r in rows]


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
    rows = conn.execute(
        "SELECT e.id, e.org_id, e.device_key, d.id,"
        " (SELECT a.shipment_key FROM device_assignments a WHERE a.device_key = e.device_key"
        "   AND a.during @> e.detected_at LIMIT 1),"
        " e.from_seq, e.to_seq, e.missing, e.recovered, e.resolved_at IS NOT NULL"
        " FROM data_loss_events e JOIN devices d ON d.key = e.device_key"
        " LEFT JOIN alerts al ON al.org_id = e.org_id AND al.episode_key = 'loss:' || e.id"
        " WHERE (e.resolved_at IS NULL AND al.id IS NULL)"
        "    OR (e.resolved_at IS NOT NULL AND al.state IN ('open', 'acknowledged'))"
        " ORDER BY e.id LIMIT %s",
        (limit,),
    ).fetchall()
    return [DataLoss(*r) for r in rows]


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
    rows = conn.execute(
        "SELECT d.org_id, d.key, d.id, a.shipment_key, s.profile_id, s.profile_version,"
        " (d.status->>'battery')::float8 * 100"
        " FROM device_assignments a JOIN devices d ON d.key = a.device_key"
        " JOIN shipments s ON s.key = a.shipment_key"
        " WHERE a.during @> now() AND jsonb_typeof(d.status->'battery') = 'number'"
    ).fetchall()
    return [BatteryReading(r[0], r[1], r[2], r[3], r[4], int(r[5]), float(r[6])) for r in rows]


@dataclass(frozen=True, slots=True)
class SeriesBatch:
    """Many series' readings fetched in one query: row ranges per (shipment, device)."""

    shipment_key: npt.NDArray[np.int32]
    device_key: npt.NDArray[np.int32]
    times_ms: npt.NDArray[np.int64]
    temps_c: npt.NDArray[np.float64]
    rh_pct: npt.NDArray[np.float64]
    door_open: npt.NDArray[np.bool_]

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
    rows = conn.execute(
        "SELECT w.s, w.d, sh.profile_id, sh.profile_version, r.state, r.last_ms, coalesce(r.outside_s, 0)"
        " FROM unnest(%s::int[], %s::int[]) AS w(s, d) JOIN shipments sh ON sh.key = w.s"
        " LEFT JOIN rule_series_state r ON r.shipment_key = w.s AND r.device_key = w.d",
        (shipments, devices),
    ).fetchall()
    return {(r[0], r[1]): SeriesContext(r[2], int(r[3]), r[4], r[5], float(r[6])) for r in rows}


_PACKED = np.dtype([("t", ">i8"), ("c", ">f8"), ("rh", ">f8"), ("f", ">i2")])


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
        "  || float8send(r.c::float8) || float8send(coalesce(r.rh, 'NaN')::float8) || int2send(r.flags),"
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
    return SeriesBatch(
        shipment_key=shipment[keep],
        device_key=device[keep],
        times_ms=times[keep],
        temps_c=packed["c"].astype(np.float64)[keep],
        rh_pct=packed["rh"].astype(np.float64)[keep],
        door_open=(packed["f"][keep] & FLAG_DOOR_OPEN) != 0,
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
            }
            for r in rows
        ]
    ).decode()
    conn.execute(
        "INSERT INTO rule_series_state (shipment_key, device_key, org_id, profile_id, profile_version,"
        " state, last_ms, at_rest, hot_high_c, hot_low_c, hot_high_rh, hot_low_rh, outside_s)"
        " SELECT (x->>'s')::int, (x->>'d')::int, (x->>'o')::smallint, x->>'p', (x->>'v')::int, x->'state',"
        " (x->>'last')::bigint, (x->>'rest')::bool, (x->>'hh')::real, (x->>'hl')::real, (x->>'rh')::real,"
        " (x->>'rl')::real, (x->>'out')::float8 FROM jsonb_array_elements(%s::jsonb) AS x"
        " ON CONFLICT (shipment_key, device_key) DO UPDATE SET state = EXCLUDED.state,"
        " last_ms = EXCLUDED.last_ms, profile_id = EXCLUDED.profile_id, at_rest = EXCLUDED.at_rest,"
        " hot_high_c = EXCLUDED.hot_high_c, hot_low_c = EXCLUDED.hot_low_c,"
        " hot_high_rh = EXCLUDED.hot_high_rh, hot_low_rh = EXCLUDED.hot_low_rh,"
        " outside_s = EXCLUDED.outside_s,"
        " profile_version = EXCLUDED.profile_version,"
        " evaluations = rule_series_state.evaluations + 1, updated_at = now()",
        (doc,),
    )
