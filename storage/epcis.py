"""Captured EPCIS documents: the kept bytes and outcome, the event keys that make a repeated event
a no-op, the SSCCs of shipments, and shipping/receiving movements with the shipment's actual
times. Every function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from coldchain.domain import Lot
from storage.audit import record
from storage.registry import upsert_lot
from storage.rows import fetch_all, fetch_one

__all__ = [
    "CaptureRow",
    "EventRow",
    "ShipmentLeg",
    "StoredCapture",
]


@dataclass(frozen=True, slots=True)
class CaptureRow:
    """A capture as it is kept: the document's bytes exactly as received, and what it did."""

    id: int
    org_id: int
    sha256: str
    body: bytes
    events: int
    new_events: int
    movements: int
    readings: int
    stored: int
    duplicates: int
    refused: int
    captured_by: str


@dataclass(frozen=True, slots=True)
class StoredCapture:
    id: int
    sha256: str
    size_bytes: int
    events: int
    new_events: int
    movements: int
    readings: int
    stored: int
    duplicates: int
    refused: int
    captured_by: str
    captured_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow:
    event_key: str
    position: int
    type: str
    biz_step: str | None
    event_time: datetime


@dataclass(frozen=True, slots=True)
class ShipmentLeg:
    """A shipment as a movement needs it: its GLNs and the actual times seen so far."""

    key: int
    id: str
    origin_gln: str | None
    destination_gln: str | None
    departed_at: datetime | None
    arrived_at: datetime | None


def lock_hash(conn: psycopg.Connection, *, org: int, sha256: str) -> None:
    """Serialise captures of the same bytes, so a document sent twice at once is kept once."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('epcis:' || %s, %s))", (sha256, org))


def lock_events(conn: psycopg.Connection, *, org: int) -> None:
    """Serialise captures of one organization's events: two documents holding the same event,
    captured at once, must not both apply it (the second waits and then finds its key)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('epcis-events', %s))", (org,))


def new_capture_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT nextval(pg_get_serial_sequence('epcis_captures', 'id'))").fetchone()
    assert row is not None
    return int(row[0])


_STORED = (
    "SELECT id, sha256, size_bytes, events, new_events, movements, readings, stored, duplicates,"
    " refused, captured_by, captured_at FROM epcis_captures"
)


def find_by_hash(conn: psycopg.Connection, *, org: int, sha256: str) -> StoredCapture | None:
    return fetch_one(conn, StoredCapture, _STORED + " WHERE org_id = %s AND sha256 = %s", (org, sha256))


def get_capture(conn: psycopg.Connection, *, org: int, capture_id: int) -> StoredCapture | None:
    return fetch_one(conn, StoredCapture, _STORED + " WHERE org_id = %s AND id = %s", (org, capture_id))


def list_captures(
    conn: psycopg.Connection, *, org: int, limit: int, before: int | None = None
) -> list[StoredCapture]:
    """Newest first; `before` pages on by id."""
    return fetch_all(
        conn,
        StoredCapture,
        _STORED + " WHERE org_id = %s AND (%s::bigint IS NULL OR id < %s) ORDER BY id DESC LIMIT %s",
        (org, before, before, limit),
    )


def capture_body(conn: psycopg.Connection, *, org: int, capture_id: int) -> tuple[bytes, str] | None:
    row = conn.execute(
        "SELECT body, sha256 FROM epcis_captures WHERE org_id = %s AND id = %s", (org, capture_id)
    ).fetchone()
    return None if row is None else (bytes(row[0]), str(row[1]))


def capture_events(conn: psycopg.Connection, *, org: int, capture_id: int) -> list[EventRow]:
    """The events a capture applied (repeats of earlier events are not listed), in document order."""
    return fetch_all(
        conn,
        EventRow,
        "SELECT event_key, position, type, biz_step, event_time FROM epcis_events"
        " WHERE org_id = %s AND capture_id = %s ORDER BY position",
        (org, capture_id),
    )


def insert_capture(conn: psycopg.Connection, row: CaptureRow) -> None:
    conn.execute(
        "INSERT INTO epcis_captures (id, org_id, sha256, body, size_bytes, events, new_events,"
        " movements, readings, stored, duplicates, refused, captured_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            row.id,
            row.org_id,
            row.sha256,
            row.body,
            len(row.body),
            row.events,
            row.new_events,
            row.movements,
            row.readings,
            row.stored,
            row.duplicates,
            row.refused,
            row.captured_by,
        ),
    )


def known_events(conn: psycopg.Connection, *, org: int, keys: Sequence[str]) -> set[str]:
    """Which of these event keys an earlier capture of the organization applied."""
    if not keys:
        return set()
    rows = conn.execute(
        "SELECT event_key FROM epcis_events WHERE org_id = %s AND event_key = ANY(%s)", (org, list(keys))
    ).fetchall()
    return {str(r[0]) for r in rows}


def insert_events(conn: psycopg.Connection, *, org: int, capture_id: int, events: Sequence[EventRow]) -> None:
    if not events:
        return
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY epcis_events (org_id, event_key, capture_id, position, type, biz_step, event_time)"
            " FROM STDIN"
        ) as copy,
    ):
        for e in events:
            copy.write_row((org, e.event_key, capture_id, e.position, e.type, e.biz_step, e.event_time))


def shipment_leg(conn: psycopg.Connection, *, org: int, shipment_id: str) -> ShipmentLeg | None:
    return fetch_one(
        conn,
        ShipmentLeg,
        "SELECT key, id, origin_gln, destination_gln, departed_at, arrived_at FROM shipments"
        " WHERE org_id = %s AND id = %s",
        (org, shipment_id),
    )


def shipments_of_units(conn: psycopg.Connection, *, org: int, ssccs: Sequence[str]) -> dict[str, str]:
    """The shipment id of each of these SSCCs that is linked to one."""
    if not ssccs:
        return {}
    rows = conn.execute(
        "SELECT u.sscc, s.id FROM shipment_units u JOIN shipments s ON s.key = u.shipment_key"
        " WHERE u.org_id = %s AND u.sscc = ANY(%s)",
        (org, list(ssccs)),
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def link_units(
    conn: psycopg.Connection,
    *,
    org: int,
    leg: ShipmentLeg,
    ssccs: Sequence[str],
    capture_id: int,
    actor: str,
) -> None:
    """Link SSCCs to the shipment (those already linked to it stay as they are); audited."""
    rows = conn.execute(
        "INSERT INTO shipment_units (org_id, sscc, shipment_key, capture_id)"
        " SELECT %s, x, %s, %s FROM unnest(%s::text[]) AS x ON CONFLICT DO NOTHING RETURNING sscc",
        (org, leg.key, capture_id, list(ssccs)),
    ).fetchall()
    if rows:
        record(
            conn,
            org_id=org,
            actor=actor,
            action="link_units",
            entity="shipment",
            key=leg.id,
            new={"ssccs": sorted(str(r[0]) for r in rows), "epcis_capture": capture_id},
        )


def record_movement(
    conn: psycopg.Connection,
    *,
    org: int,
    leg: ShipmentLeg,
    step: str,
    at: datetime,
    gln: str | None,
    ssccs: Sequence[str],
    capture_id: int,
    event_key: str,
    actor: str,
) -> ShipmentLeg:
    """Store a shipping or receiving event of the shipment and move its actual departure (the
    earliest shipping) or arrival (the latest receiving); audited. Returns the leg as it is now."""
    conn.execute(
        "INSERT INTO shipment_movements (org_id, shipment_key, step, at, gln, ssccs, capture_id, event_key)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (org, leg.key, step, at, gln, list(ssccs), capture_id, event_key),
    )
    if step == "shipping":
        row = conn.execute(
            "UPDATE shipments SET departed_at = LEAST(coalesce(departed_at, %s), %s), updated_at = now()"
            " WHERE key = %s RETURNING departed_at",
            (at, at, leg.key),
        ).fetchone()
        assert row is not None
        new_leg = ShipmentLeg(leg.key, leg.id, leg.origin_gln, leg.destination_gln, row[0], leg.arrived_at)
        old, new = leg.departed_at, new_leg.departed_at
        action = "depart"
    else:
        row = conn.execute(
            "UPDATE shipments SET arrived_at = GREATEST(coalesce(arrived_at, %s), %s), updated_at = now()"
            " WHERE key = %s RETURNING arrived_at",
            (at, at, leg.key),
        ).fetchone()
        assert row is not None
        new_leg = ShipmentLeg(leg.key, leg.id, leg.origin_gln, leg.destination_gln, leg.departed_at, row[0])
        old, new = leg.arrived_at, new_leg.arrived_at
        action = "arrive"
    record(
        conn,
        org_id=org,
        actor=actor,
        action=action,
        entity="shipment",
        key=leg.id,
        old=None if old is None else {"at": old.isoformat()},
        new={
            "at": None if new is None else new.isoformat(),
            "event_time": at.isoformat(),
            "gln": gln,
            "ssccs": list(ssccs),
            "epcis_capture": capture_id,
            "event": event_key,
        },
    )
    return new_leg


def add_lot_to_shipment(
    conn: psycopg.Connection,
    *,
    org: int,
    leg: ShipmentLeg,
    gtin: str,
    lot: str,
    quantity: int | None,
    actor: str,
) -> bool:
    """Put a lot on the shipment (registering the lot when it is new); False if it is on it."""
    upsert_lot(conn, org=org, lot=Lot(gtin=gtin, lot=lot), actor=actor)
    row = conn.execute(
        "INSERT INTO shipment_lots (shipment_key, org_id, gtin, lot, quantity) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING gtin",
        (leg.key, org, gtin, lot, quantity),
    ).fetchone()
    if row is None:
        return False
    record(
        conn,
        org_id=org,
        actor=actor,
        action="add_lot",
        entity="shipment",
        key=leg.id,
        new={"gtin": gtin, "lot": lot, "quantity": quantity},
    )
    return True


def device_keys(conn: psycopg.Connection, *, org: int, device_ids: Sequence[str]) -> dict[str, int]:
    """Keys of the organization's devices among these ids (others' devices are not found)."""
    if not device_ids:
        return {}
    rows = conn.execute(
        "SELECT id, key FROM devices WHERE org_id = %s AND id = ANY(%s)", (org, list(device_ids))
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


@dataclass(frozen=True, slots=True)
class MovementRow:
    step: str
    at: datetime
    gln: str | None
    ssccs: tuple[str, ...]
    capture_id: int
    event_key: str


def shipment_movements(
    conn: psycopg.Connection, *, org: int, shipment_id: str
) -> tuple[ShipmentLeg, list[MovementRow], list[str]] | None:
    """The shipment's actual times, its movements in time order and its SSCCs; None if unknown."""
    leg = shipment_leg(conn, org=org, shipment_id=shipment_id)
    if leg is None:
        return None
    moves = fetch_all(
        conn,
        MovementRow,
        "SELECT step, at, gln, ssccs, capture_id, event_key FROM shipment_movements"
        " WHERE org_id = %s AND shipment_key = %s ORDER BY at, id",
        (org, leg.key),
    )
    units = conn.execute(
        "SELECT sscc FROM shipment_units WHERE org_id = %s AND shipment_key = %s ORDER BY sscc",
        (org, leg.key),
    ).fetchall()
    return leg, moves, [str(r[0]) for r in units]
