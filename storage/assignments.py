"""Device assignments as records of their own: which logger rode with which shipment when, added,
ended and corrected one at a time, each edit against the version read.

A changed window (or shipment) moves readings: every reading of the logger inside the old or the
new window is linked again to the shipment whose window now contains it (or to none), in one
set-based UPDATE, and both series, the one the readings left and the one they joined, are queued
for the rules as late work, so the rules evaluate them again from their first reading and the
alerts follow. All of it in the edit's transaction: a crash leaves either the old state or the new.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.range import Range

from coldchain.errors import ConflictError, NotFoundError, ValidationError
from coldchain.master_data import Versions, check_version, check_window
from storage.audit import record
from storage.calibrations import (
    OverrideRow,
    add_override,
    check_assignable,
    has_override,
    lapsed_certificate,
    refusal,
)
from storage.listen import Wakeup, wake
from storage.rows import fetch_all, fetch_one


@dataclass(frozen=True, slots=True)
class AssignmentRow:
    id: int
    device: str
    device_key: int
    shipment: str
    shipment_key: int
    starts: datetime
    ends: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime

    def document(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "shipment": self.shipment,
            "from": self.starts.isoformat(),
            "to": self.ends.isoformat() if self.ends is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Relinked:
    """What a correction moved: readings linked anew, and the series queued for the rules."""

    readings: int
    series: int


_SELECT = (
    "SELECT a.id, d.id AS device, a.device_key, s.id AS shipment, a.shipment_key,"
    " lower(a.during) AS starts, upper(a.during) AS ends, a.version, a.created_at,"
    " coalesce(a.updated_at, a.created_at) AS updated_at FROM device_assignments a"
    " JOIN devices d ON d.key = a.device_key JOIN shipments s ON s.key = a.shipment_key"
)


def get_assignment(conn: psycopg.Connection, *, org: int, assignment_id: int) -> AssignmentRow:
    row = fetch_one(conn, AssignmentRow, _SELECT + " WHERE a.org_id = %s AND a.id = %s", (org, assignment_id))
    if row is None:
        raise NotFoundError("assignment", str(assignment_id))
    return row


def list_assignments(conn: psycopg.Connection, *, org: int, shipment_id: str) -> list[AssignmentRow]:
    if not conn.execute(
        "SELECT 1 FROM shipments WHERE org_id = %s AND id = %s", (org, shipment_id)
    ).fetchone():
        raise NotFoundError("shipment", shipment_id)
    return fetch_all(
        conn,
        AssignmentRow,
        _SELECT + " WHERE a.org_id = %s AND s.id = %s ORDER BY lower(a.during), d.id",
        (org, shipment_id),
    )


def _overlap_reason(conn: psycopg.Connection, device_key: int, during: Range[datetime], skip: int) -> str:
    row = conn.execute(
        "SELECT s.id, lower(a.during), upper(a.during) FROM device_assignments a"
        " JOIN shipments s ON s.key = a.shipment_key"
        " WHERE a.device_key = %s AND a.during && %s AND a.id <> %s ORDER BY lower(a.during) LIMIT 1",
        (device_key, during, skip),
    ).fetchone()
    if row is None:
        return "the window overlaps another assignment of the device"
    until = f" to {row[2].isoformat()}" if row[2] is not None else " (open-ended)"
    return f"the device rides with shipment {row[0]} from {row[1].isoformat()}{until}"


def _keys(
    conn: psycopg.Connection, *, org: int, device_id: str, shipment_id: str, device_field: str = "device"
) -> tuple[int, int]:
    shipment = conn.execute(
        "SELECT key FROM shipments WHERE org_id = %s AND id = %s", (org, shipment_id)
    ).fetchone()
    if shipment is None:
        raise NotFoundError("shipment", shipment_id)
    device = conn.execute(
        "SELECT key FROM devices WHERE org_id = %s AND id = %s", (org, device_id)
    ).fetchone()
    if device is None:
        raise ValidationError(f"device {device_id!r} is not registered", field=device_field)
    return int(device[0]), int(shipment[0])


def add_assignment(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment_id: str,
    device_id: str,
    starts: datetime,
    ends: datetime | None,
    actor: str,
    override: str | None = None,
    device_field: str = "device",
) -> tuple[AssignmentRow, Relinked, OverrideRow | None]:
    """A new window (409 with the other shipment when it overlaps one); readings already stored
    in it join the shipment and are queued for the rules.

    A logger out of calibration on its first day is refused (409) unless `override` (QA's reason)
    comes with it; then the override row is returned for the caller to sign. One implementation
    for POST /shipments/{id}/assignments and POST /shipments/{id}/devices."""
    check_window(starts, ends)
    with conn.transaction():
        device_key, shipment_key = _keys(
            conn, org=org, device_id=device_id, shipment_id=shipment_id, device_field=device_field
        )
        lapsed = check_assignable(
            conn, device_key=device_key, device_id=device_id, day=starts.astimezone(UTC).date(),
            override=override,
        )
        during = Range(starts, ends, "[)")
        try:
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO device_assignments (org_id, device_key, shipment_key, during)"
                    " VALUES (%s, %s, %s, %s) RETURNING id",
                    (org, device_key, shipment_key, during),
                ).fetchone()
        except pg_errors.ExclusionViolation:
            raise ConflictError(
                f"device {device_id!r} cannot ride with {shipment_id}: "
                + _overlap_reason(conn, device_key, during, 0)
            ) from None
        assert row is not None
        created = get_assignment(conn, org=org, assignment_id=int(row[0]))
        moved = _relink(conn, org=org, device_key=device_key, spans=[(starts, ends)], left=[])
        record(
            conn,
            org_id=org,
            actor=actor,
            action="assign_device",
            entity="assignment",
            key=str(created.id),
            new={**created.document(), "readings_relinked": moved.readings},
        )
        # the shipment's own trail says a logger joined it, as when it is added with the shipment
        record(
            conn,
            org_id=org,
            actor=actor,
            action="assign_device",
            entity="shipment",
            key=shipment_id,
            new={"device": device_id, "from": starts.isoformat(), "to": _iso(ends), "assignment": created.id},
        )
        made = None
        if lapsed is not None and override is not None:
            made = add_override(
                conn, org=org, assignment_id=created.id, lapsed=lapsed, reason=override, actor=actor
            )
    return created, moved, made


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def correct_assignment(
    conn: psycopg.Connection,
    *,
    org: int,
    assignment_id: int,
    changes: dict[str, Any],
    accepted: Versions,
    actor: str,
    reason: str | None = None,
) -> tuple[AssignmentRow, Relinked]:
    """Change the window (`from`, `to`: ending is setting `to`) or the shipment of an assignment
    if it is still at an accepted version (412 otherwise); overlapping another is 409."""
    with conn.transaction():
        current = fetch_one(
            conn,
            AssignmentRow,
            _SELECT + " WHERE a.org_id = %s AND a.id = %s FOR UPDATE OF a",
            (org, assignment_id),
        )
        if current is None:
            raise NotFoundError("assignment", str(assignment_id))
        check_version(f"assignment {assignment_id}", current.version, accepted)
        starts = changes.get("from", current.starts)
        ends = changes.get("to", current.ends)
        shipment_id = changes.get("shipment", current.shipment)
        check_window(starts, ends, field="to" if "to" in changes else "from")
        if (starts, ends, shipment_id) == (current.starts, current.ends, current.shipment):
            return current, Relinked(0, 0)
        if has_override(conn, assignment_id=assignment_id):
            raise ConflictError(
                f"assignment {assignment_id} rides under QA's signed calibration override, which covers"
                " its window and shipment: it cannot be corrected (QA adds a corrected assignment"
                " with a new override)"
            )
        _, shipment_key = _keys(conn, org=org, device_id=current.device, shipment_id=shipment_id)
        day = starts.astimezone(UTC).date()
        if starts != current.starts and (
            lapsed := lapsed_certificate(conn, device_key=current.device_key, day=day)
        ) is not None:
            raise ConflictError(
                refusal(current.device, day, lapsed)
                + " (QA may add the logger with a signed `calibration_override`:"
                " POST /shipments/{id}/assignments)"
            )
        during = Range(starts, ends, "[)")
        try:
            with conn.transaction():
                conn.execute(
                    "UPDATE device_assignments SET during = %s, shipment_key = %s WHERE id = %s",
                    (during, shipment_key, assignment_id),
                )
        except pg_errors.ExclusionViolation:
            raise ConflictError(
                f"assignment {assignment_id} cannot take that window: "
                + _overlap_reason(conn, current.device_key, during, assignment_id)
            ) from None
        after = get_assignment(conn, org=org, assignment_id=assignment_id)
        moved = _relink(
            conn,
            org=org,
            device_key=current.device_key,
            spans=[(current.starts, current.ends), (starts, ends)],
            left=[current.shipment_key],
        )
        before_doc, after_doc = current.document(), after.document()
        changed = [k for k in after_doc if after_doc[k] != before_doc[k]]
        record(
            conn,
            org_id=org,
            actor=actor,
            action="correct_assignment",
            entity="assignment",
            key=str(assignment_id),
            old={k: before_doc[k] for k in changed},
            new={**{k: after_doc[k] for k in changed}, "readings_relinked": moved.readings},
            reason=reason,
        )
    return after, moved


def _relink(
    conn: psycopg.Connection,
    *,
    org: int,
    device_key: int,
    spans: list[tuple[datetime, datetime | None]],
    left: list[int],
) -> Relinked:
    """Link the device's readings in the spans to the shipment whose window holds them now.

    One UPDATE over the device's readings between the spans' earliest start and latest end
    (`readings_device_t` serves it, on TimescaleDB chunk by chunk, compressed chunks included);
    the rows it moved are grouped into rule work per series they joined, and the series in `left`
    (the shipment the readings may have left) are queued over the whole span as late work, so
    their alerts are judged again without those readings.
    """
    # On TimescaleDB an UPDATE decompresses the device's segments of the compressed chunks it
    # touches; its default cap (100,000 rows a transaction) would refuse a long ride's correction.
    # The cap is lifted for this transaction only (a placeholder setting on plain PostgreSQL).
    conn.execute("SELECT set_config('timescaledb.max_tuples_decompressed_per_dml_transaction', '0', true)")
    lo = min(s for s, _ in spans)
    hi = None if any(e is None for _, e in spans) else max(e for _, e in spans if e is not None)
    windows = conn.execute(
        "SELECT lower(during), upper(during), shipment_key FROM device_assignments"
        " WHERE device_key = %s AND during && tstzrange(%s, %s, '[)') ORDER BY lower(during)",
        (device_key, lo, hi),
    ).fetchall()
    starts, ends, keys = time_segments(lo, hi, windows)
    # One UPDATE over a handful of time segments (each window, and the gaps between them, which
    # link to no shipment): each is one range scan of readings_device_t.
    rows = conn.execute(
        "WITH moved AS (UPDATE readings r SET shipment_key = m.k"
        " FROM unnest(%(starts)s::timestamptz[], %(ends)s::timestamptz[], %(keys)s::int4[]) AS m(s, e, k)"
        " WHERE r.org_id = %(org)s AND r.device_key = %(dev)s AND r.t >= m.s AND (m.e IS NULL OR r.t < m.e)"
        " AND r.shipment_key IS DISTINCT FROM m.k"
        " RETURNING r.shipment_key, r.t, r.c, r.rh),"
        " joined AS (INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, late,"
        "  min_c, max_c, min_rh, max_rh)"
        "  SELECT %(org)s, %(dev)s, shipment_key, min(t), max(t), true, min(c), max(c), min(rh), max(rh)"
        "  FROM moved WHERE shipment_key IS NOT NULL GROUP BY shipment_key RETURNING shipment_key)"
        " SELECT (SELECT count(*) FROM moved), array(SELECT shipment_key FROM joined),"
        " (SELECT min(t) FROM moved), (SELECT max(t) FROM moved)",
        {"org": org, "dev": device_key, "starts": starts, "ends": ends, "keys": keys},
    ).fetchone()
    assert rows is not None
    count, joined, first, last = int(rows[0]), list(rows[1]), rows[2], rows[3]
    series = set(joined)
    if count and left:
        # The series the readings left: judged again from its first reading (late), its extremes
        # unknown (NULL), so the fast lane takes it at once.
        conn.execute(
            "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, late)"
            " SELECT %s, %s, k, %s, %s, true FROM unnest(%s::int4[]) AS k WHERE NOT k = ANY(%s::int4[])",
            (org, device_key, first, last, left, joined),
        )
        series |= set(left)
    if series:
        wake(conn, Wakeup.RULES)
    return Relinked(readings=count, series=len(series))


def time_segments(
    lo: datetime, hi: datetime | None, windows: list[tuple[Any, ...]]
) -> tuple[list[datetime], list[datetime | None], list[int | None]]:
    """[lo, hi) cut into the device's windows (their shipment) and the gaps (no shipment); an
    end of None is open. The windows never overlap (the database refuses it)."""
    starts: list[datetime] = []
    ends: list[datetime | None] = []
    keys: list[int | None] = []
    cursor: datetime | None = lo

    def add(start: datetime, end: datetime | None, key: int | None) -> None:
        starts.append(start)
        ends.append(end)
        keys.append(key)

    for start, end, key in windows:
        if cursor is None:
            break
        begin = max(start, cursor)
        if begin > cursor:
            add(cursor, begin, None)
        stop = end if hi is None or (end is not None and end < hi) else hi
        if stop is None or stop > begin:
            add(begin, stop, int(key))
        cursor = stop
    if cursor is not None and (hi is None or cursor < hi):
        add(cursor, hi, None)
    return starts, ends, keys
