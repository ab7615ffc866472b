"""The registry: devices, lots, shipments and which logger rides with which shipment when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.range import Range

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from storage.audit import record
from storage.calibrations import OverrideRow, add_override, lapsed_certificate, refusal


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A registered device with what the platform last heard from it."""

    device: Device
    key: int
    created_at: datetime
    last_seen_at: datetime | None
    last_seq: int | None
    clock_offset_ms: int | None
    status: dict[str, Any] | None


_DEVICE_COLUMNS = (
    "d.id, d.kind, d.interval_s, o.slug AS organization, d.name, d.key, d.created_at, d.last_seen_at,"
    " d.last_seq, d.clock_offset_ms, d.status"
)
_DEVICE_FIELDS = ("id", "kind", "interval_s", "organization", "name")


def _device_record(row: dict[str, Any]) -> DeviceRecord:
    device = Device(**{f: row.pop(f) for f in _DEVICE_FIELDS})
    return DeviceRecord(device=device, **row)


def create_device(
    conn: psycopg.Connection, *, org: int, device: Device, actor: str, mqtt_password_hash: str | None = None
) -> DeviceRecord:
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO devices (id, org_id, kind, interval_s, name, mqtt_password_hash)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (device.id, org, device.kind, device.interval_s, device.name, mqtt_password_hash),
            )
    except pg_errors.UniqueViolation:
        raise ConflictError(f"device {device.id!r} is already registered") from None
    record(
        conn,
        org_id=org,
        actor=actor,
        action="create",
        entity="device",
        key=device.id,
        new={"kind": device.kind, "interval_s": device.interval_s, "name": device.name},
    )
    return get_device(conn, org=org, device_id=device.id)


def get_device(conn: psycopg.Connection, *, org: int, device_id: str) -> DeviceRecord:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices d JOIN organizations o ON o.id = d.org_id"
            " WHERE d.org_id = %s AND d.id = %s",
            (org, device_id),
        ).fetchone()
    if row is None:
        raise NotFoundError("device", device_id)
    return _device_record(row)


def list_devices(conn: psycopg.Connection, *, org: int) -> list[DeviceRecord]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices d JOIN organizations o ON o.id = d.org_id"
            " WHERE d.org_id = %s ORDER BY d.id",
            (org,),
        ).fetchall()
    return [_device_record(r) for r in rows]


def upsert_lot(conn: psycopg.Connection, *, org: int, lot: Lot, actor: str) -> None:
    """Register a lot, or confirm it: a different expiry for a known lot is refused."""
    row = conn.execute(
        "SELECT expiry FROM lots WHERE org_id = %s AND gtin = %s AND lot = %s",
        (org, lot.gtin, lot.lot),
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO lots (org_id, gtin, lot, expiry, stability_budget_s) VALUES (%s, %s, %s, %s, %s)",
            (org, lot.gtin, lot.lot, lot.expiry, lot.stability_budget_s),
        )
        record(
            conn,
            org_id=org,
            actor=actor,
            action="create",
            entity="lot",
            key=f"{lot.gtin}/{lot.lot}",
            new={"expiry": _iso(lot.expiry), "stability_budget_s": lot.stability_budget_s},
        )
    elif lot.expiry is not None and row[0] is not None and row[0] != lot.expiry:
        raise ConflictError(f"lot {lot.gtin}/{lot.lot} is registered with expiry {row[0].isoformat()}")


def create_shipment(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment: Shipment,
    profile_version: int,
    actor: str,
    overrides: dict[int, str] | None = None,
) -> list[OverrideRow]:
    """Register a shipment with its lots and device assignments in the caller's transaction.

    `overrides` maps an assignment's index to QA's reason for assigning that logger although it
    is out of calibration (the caller signs each override row returned)."""
    done: list[OverrideRow] = []
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO shipments (org_id, id, origin, destination, profile_id, profile_version)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING key",
                (org, shipment.id, shipment.origin, shipment.destination, shipment.profile, profile_version),
            ).fetchone()
            assert row is not None
            key = int(row[0])
            for item in shipment.lots:
                upsert_lot(conn, org=org, lot=item.lot, actor=actor)
                conn.execute(
                    "INSERT INTO shipment_lots (shipment_key, org_id, gtin, lot, quantity)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (key, org, item.lot.gtin, item.lot.lot, item.quantity),
                )
            for i, assignment in enumerate(shipment.devices):
                reason = (overrides or {}).get(i)
                made = _assign(
                    conn, org=org, shipment_key=key, assignment=assignment, override=reason, actor=actor,
                    field=f"devices.{i}.calibration_override",
                )
                if made is not None:
                    done.append(made)
    except pg_errors.UniqueViolation:
        raise ConflictError(f"shipment {shipment.id!r} already exists") from None
    record(
        conn,
        org_id=org,
        actor=actor,
        action="create",
        entity="shipment",
        key=shipment.id,
        new=shipment_document(shipment),
    )
    return done


def assign_device(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment_id: str,
    assignment: DeviceAssignment,
    actor: str,
    override: str | None = None,
) -> OverrideRow | None:
    """Add a logger to a registered shipment; `override` is QA's reason for one out of
    calibration (the caller signs the override row returned)."""
    key = _shipment_key(conn, org=org, shipment_id=shipment_id)
    with conn.transaction():
        made = _assign(
            conn, org=org, shipment_key=key, assignment=assignment, override=override, actor=actor,
            field="calibration_override",
        )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="assign_device",
        entity="shipment",
        key=shipment_id,
        new={"device": assignment.device_id, "from": _iso(assignment.start), "to": _iso(assignment.end)},
    )
    return made


def _assign(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment_key: int,
    assignment: DeviceAssignment,
    override: str | None = None,
    actor: str = "",
    field: str = "devices",
) -> OverrideRow | None:
    """Insert one assignment; a logger out of calibration on its first day is refused (409)
    unless QA's `override` reason comes with it, and an override it does not need is refused
    (422) so that no signed deviation is recorded for nothing."""
    row = conn.execute(
        "SELECT key FROM devices WHERE org_id = %s AND id = %s", (org, assignment.device_id)
    ).fetchone()
    if row is None:
        raise ValidationError(f"device {assignment.device_id!r} is not registered", field="devices")
    day = assignment.start.astimezone(UTC).date()
    lapsed = lapsed_certificate(conn, device_key=row[0], day=day)
    if lapsed is not None and override is None:
        raise ConflictError(
            refusal(assignment.device_id, day, lapsed)
            + " (QA may override with a signed `calibration_override`)"
        )
    if lapsed is None and override is not None:
        raise ValidationError(
            f"device {assignment.device_id!r} is not out of calibration on {day.isoformat()}:"
            " no override is needed",
            field=field,
        )
    try:
        with conn.transaction():
            made = conn.execute(
                "INSERT INTO device_assignments (org_id, device_key, shipment_key, during)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (org, row[0], shipment_key, Range(assignment.start, assignment.end, "[)")),
            ).fetchone()
    except pg_errors.ExclusionViolation:
        raise ConflictError(
            f"device {assignment.device_id!r} is already assigned to a shipment in that window"
        ) from None
    if lapsed is None or override is None:
        return None
    assert made is not None
    return add_override(
        conn, org=org, assignment_id=int(made[0]), lapsed=lapsed, reason=override, actor=actor
    )


def _shipment_key(conn: psycopg.Connection, *, org: int, shipment_id: str) -> int:
    row = conn.execute(
        "SELECT key FROM shipments WHERE org_id = %s AND id = %s", (org, shipment_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("shipment", shipment_id)
    return int(row[0])


@dataclass(frozen=True, slots=True)
class ShipmentRecord:
    shipment: Shipment
    key: int
    profile_version: int
    created_at: datetime


def get_shipment(conn: psycopg.Connection, *, org: int, shipment_id: str) -> ShipmentRecord:
    row = conn.execute(
        "SELECT s.key, s.origin, s.destination, s.profile_id, s.profile_version, s.created_at, o.slug"
        " FROM shipments s JOIN organizations o ON o.id = s.org_id WHERE s.org_id = %s AND s.id = %s",
        (org, shipment_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("shipment", shipment_id)
    return _shipment_record(conn, shipment_id, row)


def list_shipments(conn: psycopg.Connection, *, org: int) -> list[ShipmentRecord]:
    rows = conn.execute(
        "SELECT s.key, s.origin, s.destination, s.profile_id, s.profile_version, s.created_at, o.slug, s.id"
        " FROM shipments s JOIN organizations o ON o.id = s.org_id WHERE s.org_id = %s ORDER BY s.id",
        (org,),
    ).fetchall()
    return [_shipment_record(conn, r[7], r) for r in rows]


def _shipment_record(conn: psycopg.Connection, shipment_id: str, row: tuple[Any, ...]) -> ShipmentRecord:
    key = int(row[0])
    lots = conn.execute(
        "SELECT sl.gtin, sl.lot, l.expiry, sl.quantity FROM shipment_lots sl"
        " JOIN lots l USING (org_id, gtin, lot) WHERE sl.shipment_key = %s ORDER BY sl.gtin, sl.lot",
        (key,),
    ).fetchall()
    devices = conn.execute(
        "SELECT d.id, lower(a.during), upper(a.during) FROM device_assignments a"
        " JOIN devices d ON d.key = a.device_key WHERE a.shipment_key = %s ORDER BY lower(a.during), d.id",
        (key,),
    ).fetchall()
    shipment = Shipment(
        id=shipment_id,
        profile=row[3],
        origin=row[1],
        destination=row[2],
        organization=row[6],
        lots=tuple(ShipmentLot(Lot(g, lt, e), q) for g, lt, e, q in lots),
        devices=tuple(DeviceAssignment(d, s, e) for d, s, e in devices),
    )
    return ShipmentRecord(shipment=shipment, key=key, profile_version=int(row[4]), created_at=row[5])


@dataclass(frozen=True, slots=True)
class LotRecord:
    lot: Lot
    shipments: tuple[str, ...]
    devices: tuple[str, ...]
    shipment_keys: tuple[int, ...]
    stability_budget_s: int | None


def get_lot(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> LotRecord:
    row = conn.execute(
        "SELECT expiry, stability_budget_s FROM lots WHERE org_id = %s AND gtin = %s AND lot = %s",
        (org, gtin, lot),
    ).fetchone()
    if row is None:
        raise NotFoundError("lot", f"{gtin}/{lot}")
    shipments = conn.execute(
        "SELECT s.id, s.key FROM shipment_lots sl JOIN shipments s ON s.key = sl.shipment_key"
        " WHERE sl.org_id = %s AND sl.gtin = %s AND sl.lot = %s ORDER BY s.created_at, s.id",
        (org, gtin, lot),
    ).fetchall()
    keys = tuple(int(s[1]) for s in shipments)
    devices = conn.execute(
        "SELECT DISTINCT d.id FROM device_assignments a JOIN devices d ON d.key = a.device_key"
        " WHERE a.shipment_key = ANY(%s) ORDER BY d.id",
        (list(keys),),
    ).fetchall()
    return LotRecord(
        lot=Lot(gtin, lot, row[0]),
        shipments=tuple(s[0] for s in shipments),
        devices=tuple(d[0] for d in devices),
        shipment_keys=keys,
        stability_budget_s=row[1],
    )


def shipment_document(shipment: Shipment) -> dict[str, Any]:
    """A shipment as the JSON the API and the audit trail show."""
    return {
        "id": shipment.id,
        "origin": shipment.origin,
        "destination": shipment.destination,
        "profile": shipment.profile,
        "lots": [
            {"gtin": sl.lot.gtin, "lot": sl.lot.lot, "expiry": _iso(sl.lot.expiry), "quantity": sl.quantity}
            for sl in shipment.lots
        ],
        "devices": [{"id": a.device_id, "from": _iso(a.start), "to": _iso(a.end)} for a in shipment.devices],
    }


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
