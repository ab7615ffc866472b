"""The rule work queue: ranges of new readings per series, queued by ingest in the readings'
transaction and claimed by the rules runner."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import psycopg

from storage.listen import Wakeup, wake
from storage.rows import fetch_all


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
    wake(conn, Wakeup.RULES)
    return n


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
    rows = fetch_all(
        conn,
        SeriesWork,
        "WITH picked AS (SELECT DISTINCT shipment_key, device_key FROM (SELECT q.shipment_key, q.device_key"
        " FROM rule_queue q LEFT JOIN rule_series_state r"
        " ON r.shipment_key = q.shipment_key AND r.device_key = q.device_key"
        " WHERE q.shipment_key IS NOT NULL AND q.id <= %(head)s"
        + (_FAST_LANE if fast_lane else "")
        + " ORDER BY q.id LIMIT %(limit)s FOR UPDATE OF q SKIP LOCKED) AS first)"
        " DELETE FROM rule_queue q USING picked p"
        " WHERE q.shipment_key = p.shipment_key AND q.device_key = p.device_key AND q.id <= %(head)s"
        " RETURNING q.org_id, q.device_key, q.shipment_key,"
        " (extract(epoch FROM q.from_t) * 1000)::bigint AS from_ms,"
        " (extract(epoch FROM q.to_t) * 1000)::bigint AS to_ms, q.late",
        {"head": up_to if up_to is not None else (1 << 62), "limit": limit},
    )
    if not fast_lane:
        conn.execute(
            "DELETE FROM rule_queue WHERE id IN (SELECT id FROM rule_queue WHERE shipment_key IS NULL"
            " FOR UPDATE SKIP LOCKED LIMIT %s)",
            (limit,),
        )
    folded: dict[tuple[int, int], SeriesWork] = {}
    for row in rows:
        key = (row.shipment_key, row.device_key)
        prev = folded.get(key)
        folded[key] = row if prev is None else replace(
            prev,
            from_ms=min(prev.from_ms, row.from_ms),
            to_ms=max(prev.to_ms, row.to_ms),
            late=prev.late or row.late,
        )
    return list(folded.values())
