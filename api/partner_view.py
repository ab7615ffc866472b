"""What a partner organization's users see of the shipments shared with them, and nothing else:
every lookup tries the caller's own organization first, then the live shares whose scope allows
the act; anything beyond answers 404, exactly as a record that does not exist."""

from __future__ import annotations

import dataclasses

import psycopg

from coldchain.access import Principal
from coldchain.domain import Alert, AlertState
from coldchain.errors import NotFoundError
from storage import alerts, logger_files, registry, shares
from storage.logger_files import StoredFile
from storage.registry import LotRecord, ShipmentRecord
from storage.shares import Share


def _shares(conn: psycopg.Connection, caller: Principal, need: str | None) -> list[Share]:
    return [
        s for s in shares.with_partner(conn, partner_org=caller.org_id) if need is None or need in s.scope
    ]


def shipment(
    conn: psycopg.Connection, caller: Principal, shipment_id: str
) -> tuple[int, ShipmentRecord, Share | None]:
    """(owning organization, record, the share it is seen through or None for one's own)."""
    try:
        return caller.org_id, registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment_id), None
    except NotFoundError:
        for s in _shares(conn, caller, None):
            if s.shipment_id == shipment_id:
                return (
                    s.owner_org_id,
                    registry.get_shipment(conn, org=s.owner_org_id, shipment_id=shipment_id),
                    s,
                )
        raise


def shared_shipments(conn: psycopg.Connection, caller: Principal) -> list[tuple[ShipmentRecord, Share]]:
    return [
        (registry.get_shipment(conn, org=s.owner_org_id, shipment_id=s.shipment_id), s)
        for s in _shares(conn, caller, None)
    ]


def lot(
    conn: psycopg.Connection, caller: Principal, gtin: str, lot_id: str, need: str | None = None
) -> tuple[int, LotRecord]:
    """The lot as the caller may see it: all of it when it is the caller's, else only the legs of
    the shipments shared with the caller (with `need` in their scope)."""
    try:
        return caller.org_id, registry.get_lot(conn, org=caller.org_id, gtin=gtin, lot=lot_id)
    except NotFoundError:
        by_owner: dict[int, set[int]] = {}
        for s in _shares(conn, caller, need):
            by_owner.setdefault(s.owner_org_id, set()).add(s.shipment_key)
        for owner, keys in by_owner.items():
            try:
                rec = registry.get_lot(conn, org=owner, gtin=gtin, lot=lot_id)
            except NotFoundError:
                continue
            pairs = [
                (sid, key) for sid, key in zip(rec.shipments, rec.shipment_keys, strict=True) if key in keys
            ]
            if not pairs:
                continue
            devices = sorted(
                {
                    d.device_id
                    for sid, _ in pairs
                    for d in registry.get_shipment(conn, org=owner, shipment_id=sid).shipment.devices
                }
            )
            restricted = dataclasses.replace(
                rec,
                shipments=tuple(sid for sid, _ in pairs),
                shipment_keys=tuple(key for _, key in pairs),
                devices=tuple(devices),
            )
            return owner, restricted
        raise


def alert_org(conn: psycopg.Connection, caller: Principal, alert_id: int, need: str | None) -> int:
    """The organization owning an alert the caller may see (`need` None: the caller's own only)."""
    try:
        alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)
        return caller.org_id
    except NotFoundError:
        if need is None:
            raise
        for s in _shares(conn, caller, need):
            try:
                found = alerts.get_alert(conn, org=s.owner_org_id, alert_id=alert_id)
            except NotFoundError:
                continue
            if found.shipment_id == s.shipment_id:
                return s.owner_org_id
        raise


def shared_alerts(
    conn: psycopg.Connection, caller: Principal, states: list[AlertState] | None, limit: int
) -> list[Alert]:
    out: list[Alert] = []
    for s in _shares(conn, caller, "alerts"):
        out += alerts.list_alerts(
            conn, org=s.owner_org_id, states=states, shipment_keys=[s.shipment_key], limit=limit
        )
    return out[:limit]


def shared_ids(conn: psycopg.Connection, caller: Principal, owner: int, need: str) -> set[str]:
    """Ids of the owner's shipments shared with the caller with `need` in scope."""
    return {s.shipment_id for s in _shares(conn, caller, need) if s.owner_org_id == owner}


def evidence_shipment_org(conn: psycopg.Connection, caller: Principal, shipment_id: str) -> int:
    """The organization owning the shipment whose evidence the caller may have: its own, or one
    shared with it with "evidence" in scope."""
    org, _, share = shipment(conn, caller, shipment_id)
    if share is not None and "evidence" not in share.scope:
        raise NotFoundError("shipment", shipment_id)
    return org


def evidence_alert_org(conn: psycopg.Connection, caller: Principal, alert_id: int) -> int:
    """The organization owning the alert whose evidence the caller may have: its own, or one on a
    shipment shared with it with both "alerts" and "evidence" in scope."""
    try:
        alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)
        return caller.org_id
    except NotFoundError:
        for s in _shares(conn, caller, "alerts"):
            if "evidence" not in s.scope:
                continue
            try:
                found = alerts.get_alert(conn, org=s.owner_org_id, alert_id=alert_id)
            except NotFoundError:
                continue
            if found.shipment_id == s.shipment_id:
                return s.owner_org_id
        raise


def logger_file(conn: psycopg.Connection, caller: Principal, file_id: int) -> tuple[int, StoredFile]:
    """A kept logger file the caller may see: its own organization's, or one recorded on a
    shipment shared with it with "readings" in scope (the file is that shipment's readings)."""
    try:
        return caller.org_id, logger_files.get_file(conn, org=caller.org_id, file_id=file_id)
    except NotFoundError:
        for s in _shares(conn, caller, "readings"):
            try:
                found = logger_files.get_file(conn, org=s.owner_org_id, file_id=file_id)
            except NotFoundError:
                continue
            if found.shipment_id == s.shipment_id:
                return s.owner_org_id, found
        raise


def shared_logger_files(
    conn: psycopg.Connection, caller: Principal, device_id: str | None
) -> list[StoredFile]:
    """The logger files of the shipments shared with the caller with "readings" (of one logger)."""
    out: list[StoredFile] = []
    for s in _shares(conn, caller, "readings"):
        out += [
            f
            for f in logger_files.list_files(conn, org=s.owner_org_id, shipment_key=s.shipment_key)
            if device_id is None or f.device_id == device_id
        ]
    return out
