"""Devices, shipments and alarm profiles: what the ERP and logistics register."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, status

from api import partner_view
from api.deps import Caller, Conn
from api.schemas import DeviceCreate, DevicePublic, ProductProfileBody, ShipmentCreate
from coldchain.access import Permission
from coldchain.alarm_profile import AlarmProfile
from coldchain.gs1 import normalize_gtin
from storage import profile_changes, profiles, registry
from storage.registry import DeviceRecord, ShipmentRecord, shipment_document
from storage.shares import Share

router = APIRouter()


def _device(rec: DeviceRecord) -> DevicePublic:
    return DevicePublic(
        id=rec.device.id,
        kind=rec.device.kind,
        interval_s=rec.device.interval_s,
        name=rec.device.name,
        created_at=rec.created_at,
        last_seen_at=rec.last_seen_at,
        last_seq=rec.last_seq,
        clock_offset_ms=rec.clock_offset_ms,
        status=rec.status,
    )


def _shipment(rec: ShipmentRecord) -> dict[str, Any]:
    doc = shipment_document(rec.shipment)
    doc["profile_version"] = rec.profile_version
    doc["created_at"] = rec.created_at
    return doc


@router.post("/devices", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
def create_device(body: DeviceCreate, conn: Conn, caller: Caller) -> DevicePublic:
    caller.require(Permission.REGISTER)
    with conn.transaction():
        rec = registry.create_device(
            conn, org=caller.org_id, device=body.to_domain(caller.organization), actor=caller.name
        )
    return _device(rec)


@router.get("/devices", response_model=list[DevicePublic])
def list_devices(conn: Conn, caller: Caller) -> list[DevicePublic]:
    return [_device(r) for r in registry.list_devices(conn, org=caller.org_id)]


@router.get("/devices/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, conn: Conn, caller: Caller) -> DevicePublic:
    return _device(registry.get_device(conn, org=caller.org_id, device_id=device_id))


@router.post("/shipments", status_code=status.HTTP_201_CREATED)
def create_shipment(body: ShipmentCreate, conn: Conn, caller: Caller) -> dict[str, Any]:
    caller.require(Permission.REGISTER)
    gtins = [normalize_gtin(x.gtin) for x in body.lots]
    chosen = body.profile or profiles.default_for(conn, org=caller.org_id, gtins=gtins)
    shipment = body.to_domain(caller.organization, profile=chosen)
    with conn.transaction():
        profile = profiles.resolve(conn, org=caller.org_id, profile_id=shipment.profile)
        registry.create_shipment(
            conn,
            org=caller.org_id,
            shipment=shipment,
            profile_version=profile.version,
            actor=caller.name,
        )
    return _shipment(registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment.id))


@router.get("/shipments")
def list_shipments(conn: Conn, caller: Caller) -> list[dict[str, Any]]:
    own = [_shipment(r) for r in registry.list_shipments(conn, org=caller.org_id)]
    shared = [_shared(_shipment(r), s) for r, s in partner_view.shared_shipments(conn, caller)]
    return own + shared


@router.get("/shipments/{shipment_id}")
def get_shipment(shipment_id: str, conn: Conn, caller: Caller) -> dict[str, Any]:
    _, rec, share = partner_view.shipment(conn, caller, shipment_id)
    return _shipment(rec) if share is None else _shared(_shipment(rec), share)


def _shared(doc: dict[str, Any], share: Share) -> dict[str, Any]:
    """A partner's view of a shipment: who shared it and the scope."""
    return {**doc, "shared_by": share.owner, "scope": list(share.scope)}


@router.get("/profiles")
def list_profiles(conn: Conn, caller: Caller) -> list[dict[str, Any]]:
    return [p.to_dict() for p in profiles.list_profiles(conn, org=caller.org_id)]


@router.get("/profiles/{profile_id}")
def get_profile(profile_id: str, conn: Conn, caller: Caller, version: int | None = None) -> dict[str, Any]:
    return profiles.resolve(conn, org=caller.org_id, profile_id=profile_id, version=version).to_dict()


@router.post("/profiles", status_code=status.HTTP_201_CREATED)
def create_profile(conn: Conn, caller: Caller, body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
    """A new custom profile, or a new version of one (the version number is assigned here).
    Alarm limits are QA's to change (segregation of duties), never ERP's or logistics'."""
    caller.require(Permission.CHANGE_PROFILE)
    profile = AlarmProfile.from_dict({**body, "version": body.get("version", 1)})
    # A draft: in force only once a different QA person approves it (POST .../versions/{v}/approve).
    draft = profile_changes.save_draft(conn, org=caller.org_id, profile=profile, actor=caller.name)
    return {**draft.body, "state": draft.state, "created_by": draft.created_by}


@router.put("/products/{gtin}/profile")
def set_product_profile(gtin: str, body: ProductProfileBody, conn: Conn, caller: Caller) -> dict[str, Any]:
    """The alarm profile shipments of this product travel under when they name none."""
    caller.require(Permission.REGISTER)
    normalized = normalize_gtin(gtin)
    profiles.set_product_default(
        conn, org=caller.org_id, gtin=normalized, profile_id=body.profile, actor=caller.name
    )
    return {"gtin": normalized, "profile": body.profile}
