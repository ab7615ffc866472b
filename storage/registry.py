"""The registry: devices, lots, shipments and which logger rides with which shipment when."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.range import Range

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from coldchain.master_data import Versions, check_state_change, check_version
from storage import assignments
from storage.audit import record
from storage.calibrations import OverrideRow, add_override, check_assignable
from storage.rows import fetch_all, fetch_one


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A registered device with what the platform last heard from it."""

    device: Device
    key: int
    mqtt_name: str  # what it goes by on the broker (migration 145)
    created_at: datetime
    last_seen_at: datetime | None
    last_seq: int | None
    clock_offset_ms: int | None
    status: dict[str, Any] | None


_DEVICE_COLUMNS = (
    "d.id, d.kind, d.interval_s, o.slug AS organization, d.name, d.key, d.mqtt_name, d.created_at,"
    " d.last_seen_at, d.last_seq, d.clock_offset_ms, d.status"
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
    calibration (the caller signs the override row returned). The same act as
    POST /shipments/{id}/assignments: readings the logger already stored in the window join the
    shipment and are queued for the rules (storage.assignments.add_assignment)."""
    _, _, made = assignments.add_assignment(
        conn, org=org, shipment_id=shipment_id, device_id=assignment.device_id, starts=assignment.start,
        ends=assignment.end, actor=actor, override=override, device_field="id",
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
    lapsed = check_assignable(
        conn, device_key=row[0], device_id=assignment.device_id, day=day, override=override, field=field
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


@dataclass(frozen=True, slots=True)
class LegRow:
    """One leg of a shipment, in order (`seq` from 1)."""

    seq: int
    origin_gln: str | None
    destination_gln: str | None
    carrier: str | None
    mode: str | None
    planned_departure: datetime | None
    planned_arrival: datetime | None
    actual_departure: datetime | None
    actual_arrival: datetime | None
    state: str


@dataclass(frozen=True, slots=True)
class ShipmentRecord:
    shipment: Shipment
    key: int
    profile_version: int
    created_at: datetime
    origin_gln: str | None = None
    destination_gln: str | None = None
    carrier: str | None = None
    mode: str | None = None
    planned_departure: datetime | None = None
    planned_arrival: datetime | None = None
    actual_departure: datetime | None = None
    actual_arrival: datetime | None = None
    state: str = "planned"
    version: int = 1
    updated_at: datetime | None = None
    legs: tuple[LegRow, ...] = ()
    erp_ref: str | None = None  # set by the ERP (PUT /erp/shipments/{id}/reference), not an edit

    def document(self) -> dict[str, Any]:
        """The editable values, as the audit trail records them."""
        return {
            "origin": self.shipment.origin,
            "destination": self.shipment.destination,
            **{name: _json_value(getattr(self, name)) for name in _HEADER_COLUMNS},
            "legs": [{k: _json_value(v) for k, v in asdict(leg).items()} for leg in self.legs],
        }


SHIPMENT_EDITABLE = (
    "origin", "destination", "origin_gln", "destination_gln", "carrier", "mode", "planned_departure",
    "planned_arrival", "actual_departure", "actual_arrival", "state",
)
_HEADER_COLUMNS = SHIPMENT_EDITABLE[2:]  # what the domain Shipment does not carry
_SHIPMENT_SELECT = (
    "SELECT s.key, s.id, s.origin, s.destination, s.profile_id, s.profile_version, s.created_at,"
    " o.slug AS organization, s.origin_gln, s.destination_gln, s.carrier, s.mode, s.planned_departure,"
    " s.planned_arrival, s.actual_departure, s.actual_arrival, s.state, s.version,"
    " coalesce(s.updated_at, s.created_at) AS updated_at, s.erp_ref"
    " FROM shipments s JOIN organizations o ON o.id = s.org_id"
)


def get_shipment(
    conn: psycopg.Connection, *, org: int, shipment_id: str, lock: bool = False
) -> ShipmentRecord:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            _SHIPMENT_SELECT + " WHERE s.org_id = %s AND s.id = %s" + (" FOR UPDATE OF s" if lock else ""),
            (org, shipment_id),
        ).fetchone()
    if row is None:
        raise NotFoundError("shipment", shipment_id)
    return _shipment_record(conn, row)


def list_shipments(
    conn: psycopg.Connection,
    *,
    org: int,
    state: str | None = None,
    origin: str | None = None,
    destination: str | None = None,
    carrier: str | None = None,
    updated_since: datetime | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[ShipmentRecord]:
    """Shipments in id order after `after`; `origin`/`destination` match the name or the GLN."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _SHIPMENT_SELECT + " WHERE s.org_id = %(org)s AND (%(after)s::text IS NULL OR s.id > %(after)s)"
            " AND (%(state)s::text IS NULL OR s.state = %(state)s)"
            " AND (%(origin)s::text IS NULL OR s.origin = %(origin)s OR s.origin_gln = %(origin)s)"
            " AND (%(destination)s::text IS NULL OR s.destination = %(destination)s"
            "  OR s.destination_gln = %(destination)s)"
            " AND (%(carrier)s::text IS NULL OR s.carrier = %(carrier)s)"
            " AND (%(since)s::timestamptz IS NULL OR coalesce(s.updated_at, s.created_at) >= %(since)s)"
            " ORDER BY s.id LIMIT %(limit)s",
            {
                "org": org, "after": after, "state": state, "origin": origin, "destination": destination,
                "carrier": carrier, "since": updated_since, "limit": limit,
            },
        ).fetchall()
    return [_shipment_record(conn, r) for r in rows]


def _shipment_record(conn: psycopg.Connection, row: dict[str, Any]) -> ShipmentRecord:
    key = int(row["key"])
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
    legs = fetch_all(
        conn,
        LegRow,
        "SELECT seq, origin_gln, destination_gln, carrier, mode, planned_departure, planned_arrival,"
        " actual_departure, actual_arrival, state FROM shipment_legs WHERE shipment_key = %s ORDER BY seq",
        (key,),
    )
    shipment = Shipment(
        id=row["id"],
        profile=row["profile_id"],
        origin=row["origin"],
        destination=row["destination"],
        organization=row["organization"],
        lots=tuple(ShipmentLot(Lot(g, lt, e), q) for g, lt, e, q in lots),
        devices=tuple(DeviceAssignment(d, s, e) for d, s, e in devices),
    )
    return ShipmentRecord(
        shipment=shipment,
        key=key,
        profile_version=int(row["profile_version"]),
        created_at=row["created_at"],
        **{name: row[name] for name in _HEADER_COLUMNS},
        version=int(row["version"]),
        updated_at=row["updated_at"],
        legs=tuple(legs),
        erp_ref=row["erp_ref"],
    )


def update_shipment(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment_id: str,
    changes: dict[str, Any],
    legs: list[dict[str, Any]] | None,
    accepted: Versions,
    actor: str,
) -> ShipmentRecord:
    """Change a shipment's header fields and (when `legs` is given) replace its legs, if it is
    still at an accepted version; a state may only move forward (409)."""
    with conn.transaction():
        current = get_shipment(conn, org=org, shipment_id=shipment_id, lock=True)
        check_version(f"shipment {shipment_id}", current.version, accepted)
        before = current.document()
        wanted = {k: _json_value(v) for k, v in changes.items()}
        diff = [k for k, v in wanted.items() if before.get(k) != v]
        new_legs = [{k: _json_value(v) for k, v in leg.items()} for leg in legs] if legs is not None else None
        legs_changed = new_legs is not None and new_legs != before["legs"]
        if not diff and not legs_changed:
            return current
        if "state" in diff:
            check_state_change(current.state, changes["state"])
        for old_leg, leg in zip(current.legs, legs or [], strict=False):
            if old_leg.seq == leg["seq"]:
                check_state_change(old_leg.state, leg["state"], what=f"leg {leg['seq']}")
        merged = {name: getattr(current, name) for name in _HEADER_COLUMNS}
        merged |= {"origin": current.shipment.origin, "destination": current.shipment.destination}
        merged |= {k: changes[k] for k in diff}
        conn.execute(
            "UPDATE shipments SET origin = %(origin)s, destination = %(destination)s,"
            " origin_gln = %(origin_gln)s, destination_gln = %(destination_gln)s, carrier = %(carrier)s,"
            " mode = %(mode)s, planned_departure = %(planned_departure)s,"
            " planned_arrival = %(planned_arrival)s, actual_departure = %(actual_departure)s,"
            " actual_arrival = %(actual_arrival)s, state = %(state)s,"
            " updated_at = clock_timestamp() WHERE key = %(key)s",
            {**merged, "key": current.key},
        )
        if legs is not None and legs_changed:
            conn.execute("DELETE FROM shipment_legs WHERE shipment_key = %s", (current.key,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO shipment_legs (shipment_key, seq, origin_gln, destination_gln, carrier,"
                    " mode, planned_departure, planned_arrival, actual_departure, actual_arrival, state)"
                    " VALUES (%(key)s, %(seq)s, %(origin_gln)s, %(destination_gln)s, %(carrier)s, %(mode)s,"
                    " %(planned_departure)s, %(planned_arrival)s, %(actual_departure)s, %(actual_arrival)s,"
                    " %(state)s)",
                    [{**leg, "key": current.key} for leg in legs],
                )
        after = get_shipment(conn, org=org, shipment_id=shipment_id)
        changed = [*diff, *(["legs"] if legs_changed else [])]
        now = after.document()
        record(
            conn, org_id=org, actor=actor, action="update", entity="shipment", key=shipment_id,
            old={k: before[k] for k in changed}, new={k: now[k] for k in changed},
        )
    return after


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


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


# --- lots as master data: one lot's own values, edited against the version read ---------------


@dataclass(frozen=True, slots=True)
class LotMasterRow:
    gtin: str
    lot: str
    expiry: date | None
    quantity: int | None
    serials: tuple[str, ...] | None
    stability_budget_s: int | None
    version: int
    created_at: datetime
    updated_at: datetime

    def document(self) -> dict[str, Any]:
        return {
            "gtin": self.gtin,
            "lot": self.lot,
            "expiry": _iso(self.expiry),
            "quantity": self.quantity,
            "serials": list(self.serials) if self.serials is not None else None,
            "stability_budget_s": self.stability_budget_s,
        }


LOT_EDITABLE = ("expiry", "quantity", "serials", "stability_budget_s")
_LOT_SELECT = (
    "SELECT gtin, lot, expiry, quantity, serials, stability_budget_s, version, created_at,"
    " coalesce(updated_at, created_at) AS updated_at FROM lots"
)


def get_lot_master(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> LotMasterRow:
    row = fetch_one(
        conn, LotMasterRow, _LOT_SELECT + " WHERE org_id = %s AND gtin = %s AND lot = %s", (org, gtin, lot)
    )
    if row is None:
        raise NotFoundError("lot", f"{gtin}/{lot}")
    return row


def list_lots(
    conn: psycopg.Connection,
    *,
    org: int,
    gtin: str,
    expires_from: date | None,
    expires_before: date | None,
    after: str | None,
    limit: int,
) -> list[LotMasterRow]:
    """A product's lots in lot order after `after`, optionally by expiry (from, inclusive; before,
    exclusive; a lot without an expiry matches neither bound)."""
    return fetch_all(
        conn,
        LotMasterRow,
        _LOT_SELECT + " WHERE org_id = %(org)s AND gtin = %(gtin)s"
        " AND (%(after)s::text IS NULL OR lot > %(after)s)"
        " AND (%(from)s::date IS NULL OR expiry >= %(from)s)"
        " AND (%(before)s::date IS NULL OR expiry < %(before)s)"
        " ORDER BY lot LIMIT %(limit)s",
        {
            "org": org, "gtin": gtin, "after": after, "from": expires_from, "before": expires_before,
            "limit": limit,
        },
    )


def create_lot(conn: psycopg.Connection, *, org: int, values: dict[str, Any], actor: str) -> LotMasterRow:
    """A new lot of a registered product (404 otherwise, 409 if the lot exists); a lot that names
    no stability budget takes its product's, as an import does."""
    gtin, lot = values["gtin"], values["lot"]
    with conn.transaction():
        product = conn.execute(
            "SELECT stability_budget_s FROM products WHERE org_id = %s AND gtin = %s", (org, gtin)
        ).fetchone()
        if product is None:
            raise NotFoundError("product", gtin)
        budget = values.get("stability_budget_s")
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO lots (org_id, gtin, lot, expiry, quantity, serials, stability_budget_s)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        org, gtin, lot, values.get("expiry"), values.get("quantity"), values.get("serials"),
                        budget if budget is not None else product[0],
                    ),
                )
        except pg_errors.UniqueViolation:
            raise ConflictError(f"lot {gtin}/{lot} is already registered") from None
        created = get_lot_master(conn, org=org, gtin=gtin, lot=lot)
        record(
            conn, org_id=org, actor=actor, action="create", entity="lot", key=f"{gtin}/{lot}",
            new=created.document(),
        )
    return created


def update_lot(
    conn: psycopg.Connection,
    *,
    org: int,
    gtin: str,
    lot: str,
    changes: dict[str, Any],
    accepted: Versions,
    actor: str,
) -> LotMasterRow:
    with conn.transaction():
        current = fetch_one(
            conn,
            LotMasterRow,
            _LOT_SELECT + " WHERE org_id = %s AND gtin = %s AND lot = %s FOR UPDATE",
            (org, gtin, lot),
        )
        if current is None:
            raise NotFoundError("lot", f"{gtin}/{lot}")
        check_version(f"lot {gtin}/{lot}", current.version, accepted)
        before = current.document()
        wanted = {k: _iso(v) if isinstance(v, date) else v for k, v in changes.items()}
        diff = [k for k, v in wanted.items() if before.get(k) != v]
        if not diff:
            return current
        merged = {
            "expiry": current.expiry,
            "quantity": current.quantity,
            "serials": list(current.serials) if current.serials is not None else None,
            "stability_budget_s": current.stability_budget_s,
            **{k: changes[k] for k in diff},
        }
        conn.execute(
            "UPDATE lots SET expiry = %s, quantity = %s, serials = %s, stability_budget_s = %s"
            " WHERE org_id = %s AND gtin = %s AND lot = %s",
            (*(merged[c] for c in LOT_EDITABLE), org, gtin, lot),
        )
        after = get_lot_master(conn, org=org, gtin=gtin, lot=lot)
        record(
            conn, org_id=org, actor=actor, action="update", entity="lot", key=f"{gtin}/{lot}",
            old={k: before[k] for k in diff}, new={k: after.document()[k] for k in diff},
        )
    return after
