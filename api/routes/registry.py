"""Devices, shipments and alarm profiles: what the ERP and logistics register."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status

from api import esign, pagination, partner_view
from api.concurrency import IfMatch, accepted_versions, set_etag, with_etag
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, EDIT, WITH_BODY, responses
from api.pagination import Cursor, OptionalLimit
from api.routes.device_config import configure
from api.schemas import (
    DEVICE_ID_PATTERN,
    GTIN_PATTERN,
    PG_INT,
    PROFILE_ID_PATTERN,
    SHIPMENT_SEGMENT_PATTERN,
    AlarmProfileBody,
    AlarmProfileOut,
    AssignmentIn,
    CalibrationOverrideIn,
    CalibrationOverrideOut,
    DeviceCreate,
    DeviceOut,
    DeviceStatusOut,
    LegOut,
    Moment,
    ProductProfileBody,
    ProductProfileOut,
    ProfileDraftOut,
    ShipmentCreate,
    ShipmentOut,
    ShipmentState,
    ShipmentUpdate,
    check_gtin,
    profile_out,
    shipment_out,
    signature_out,
)
from coldchain.access import Permission
from coldchain.alarm_profile import AlarmProfile
from coldchain.errors import PermissionDeniedError, ValidationError
from coldchain.esignature import Meaning
from coldchain.gs1 import normalize_gtin
from coldchain.master_data import check_times
from storage import assignments, calibrations, profile_changes, profiles, registry, users
from storage.assignments import AssignmentRow, Relinked
from storage.registry import DeviceRecord, ShipmentRecord
from storage.shares import Share

router = APIRouter()

DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["TRK-0042-L1"])]
ShipmentPath = Annotated[str, Path(pattern=SHIPMENT_SEGMENT_PATTERN, examples=["SO-1001"])]
ProfilePath = Annotated[str, Path(pattern=PROFILE_ID_PATTERN, examples=["2-8C"])]
GtinPath = Annotated[
    str, Path(pattern=GTIN_PATTERN, examples=["09506000134352"], json_schema_extra={"format": "gtin"})
]


def _device(rec: DeviceRecord) -> DeviceOut:
    return DeviceOut(
        id=rec.device.id,
        mqtt_name=rec.mqtt_name,
        kind=rec.device.kind,
        interval_s=rec.device.interval_s,
        name=rec.device.name,
        created_at=rec.created_at,
        last_seen_at=rec.last_seen_at,
        last_seq=rec.last_seq,
        clock_offset_ms=rec.clock_offset_ms,
        status=None if rec.status is None else DeviceStatusOut.model_validate(rec.status),
    )


def _shipment(
    conn: Conn, rec: ShipmentRecord, org: int | None = None, response: Response | None = None
) -> ShipmentOut:
    """A shipment as its owner sees it: header, legs and version (the `ETag` set on `response`),
    QA's calibration overrides with their signatures and the ERP's reference (`org` None: a
    partner's view, without overrides or ERP reference)."""
    if response is not None:
        set_etag(response, rec.version)
    overrides: dict[tuple[str, datetime], CalibrationOverrideOut] = {}
    if org is not None:
        for o in calibrations.overrides_for(conn, org=org, shipment_keys=[rec.key]):
            signed = esign.shown(
                conn, org=org, entity="calibration_override", key=str(o.id), record=o.signed_record()
            )
            overrides[(o.device_id, o.rode_from)] = CalibrationOverrideOut.model_validate(
                {**o.public(), "signatures": [signature_out(x) for x in signed]}
            )
    doc = shipment_out(
        rec.shipment, profile_version=rec.profile_version, created_at=rec.created_at, overrides=overrides
    )
    return doc.model_copy(
        update={
            "origin_gln": rec.origin_gln,
            "destination_gln": rec.destination_gln,
            "carrier": rec.carrier,
            "mode": rec.mode,
            "planned_departure": rec.planned_departure,
            "planned_arrival": rec.planned_arrival,
            "actual_departure": rec.actual_departure,
            "actual_arrival": rec.actual_arrival,
            "state": rec.state,
            "legs": [LegOut.model_validate(leg, from_attributes=True) for leg in rec.legs],
            "version": rec.version,
            "updated_at": rec.updated_at,
            "erp_ref": rec.erp_ref if org is not None else None,
        }
    )


@router.post(
    "/devices",
    tags=["devices"],
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceOut,
    responses=responses(*WITH_BODY, 409),
)
def create_device(body: DeviceCreate, conn: Conn, caller: Caller) -> DeviceOut:
    caller.require(Permission.REGISTER)
    with conn.transaction():
        rec = registry.create_device(
            conn, org=caller.org_id, device=body.to_domain(caller.organization), actor=caller.name
        )
    return _device(rec)


@router.get("/devices", tags=["devices"], response_model=list[DeviceOut], responses=responses(*AUTHED))
def list_devices(conn: Conn, caller: Caller) -> list[DeviceOut]:
    return [_device(r) for r in registry.list_devices(conn, org=caller.org_id)]


@router.get(
    "/devices/{device_id}",
    tags=["devices"],
    response_model=DeviceOut,
    responses=responses(*AUTHED, 404),
)
def get_device(device_id: DevicePath, conn: Conn, caller: Caller) -> DeviceOut:
    return _device(registry.get_device(conn, org=caller.org_id, device_id=device_id))


@router.post(
    "/shipments",
    tags=["shipments"],
    status_code=status.HTTP_201_CREATED,
    response_model=ShipmentOut,
    responses=with_etag(201, responses(*WITH_BODY, 404, 409)),
)
def create_shipment(
    body: ShipmentCreate, response: Response, conn: Conn, caller: Caller, settings: AppSettings
) -> ShipmentOut:
    """A shipment with its lots and loggers. The devices must be registered (422 otherwise), the
    profile must exist (404), a logger cannot ride two shipments at once (409), nor one out of
    calibration on its first day (409) unless its assignment carries QA's signed
    `calibration_override` (the caller holds `qa` besides a registering role, and is a person:
    403 otherwise; the signature's meaning is `approval`)."""
    caller.require(Permission.REGISTER)
    overrides = {i: d.calibration_override for i, d in enumerate(body.devices) if d.calibration_override}
    signers: dict[int, users.UserRow] = {}
    if overrides:
        if not caller.can(Permission.DISPOSITION):
            raise PermissionDeniedError("overriding a logger's calibration is QA's decision (role qa)")
        for i, o in overrides.items():
            if o.signature.meaning is not Meaning.APPROVAL:
                raise ValidationError(
                    "a calibration override is signed with the meaning 'approval'",
                    field=f"devices.{i}.calibration_override.signature.meaning",
                )
            signers[i] = esign.reauthenticate(conn, settings, caller, o.signature)
    gtins = [normalize_gtin(x.gtin) for x in body.lots]
    chosen = body.profile or profiles.default_for(conn, org=caller.org_id, gtins=gtins)
    shipment = body.to_domain(caller.organization, profile=chosen)
    with conn.transaction():
        profile = profiles.resolve(conn, org=caller.org_id, profile_id=shipment.profile)
        made = registry.create_shipment(
            conn,
            org=caller.org_id,
            shipment=shipment,
            profile_version=profile.version,
            actor=caller.name,
            overrides={i: o.reason for i, o in overrides.items()},
        )
        by_assignment = {
            (a.device_id, a.start): i for i, a in enumerate(shipment.devices) if i in overrides
        }
        for row in made:
            i = by_assignment[(row.device_id, row.rode_from)]
            esign.sign(
                conn, caller, signers[i], overrides[i].signature, entity="calibration_override",
                key=str(row.id), action="override_calibration", record=row.signed_record(),
            )
        for assignment in shipment.devices:  # each logger gets the shipment's local alarm
            configure(conn, org=caller.org_id, device_id=assignment.device_id, actor=caller.name,
                      reason=f"assigned to shipment {shipment.id}")
    created = registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment.id)
    return _shipment(conn, created, caller.org_id, response)


@router.post(
    "/shipments/{shipment_id}/devices",
    tags=["shipments"],
    status_code=status.HTTP_201_CREATED,
    response_model=ShipmentOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def assign_logger(
    shipment_id: ShipmentPath, body: AssignmentIn, conn: Conn, caller: Caller, settings: AppSettings
) -> ShipmentOut:
    """Add a logger to a registered shipment (a role that registers; 422 for an unregistered
    device, 409 for a logger riding another shipment then, or out of calibration on `from`).
    With QA's signed `calibration_override` it is QA's act alone (a person holding `qa`; meaning
    `approval`): logistics registers the shipment, QA adds the logger it decided may ride.
    The same act as POST /shipments/{shipment_id}/assignments, answered with the shipment."""
    add_logger(
        conn, settings, caller, shipment_id=shipment_id, device_id=body.id, starts=body.from_, ends=body.to,
        override=body.calibration_override, device_field="id",
    )
    updated = registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment_id)
    return _shipment(conn, updated, caller.org_id)


def add_logger(
    conn: Conn,
    settings: AppSettings,
    caller: Caller,
    *,
    shipment_id: str,
    device_id: str,
    starts: datetime,
    ends: datetime | None,
    override: CalibrationOverrideIn | None,
    device_field: str = "device",
) -> tuple[AssignmentRow, Relinked]:
    """A logger joins a registered shipment: one path for POST /shipments/{id}/devices and
    POST /shipments/{id}/assignments. Without an override a registering role; with QA's signed
    `calibration_override` a person holding `qa` (meaning `approval`, password checked), and the
    override is signed in the same transaction as the assignment."""
    signer: users.UserRow | None = None
    if override is None:
        caller.require(Permission.REGISTER)
    else:
        if not caller.can(Permission.DISPOSITION):
            raise PermissionDeniedError("overriding a logger's calibration is QA's decision (role qa)")
        if override.signature.meaning is not Meaning.APPROVAL:
            raise ValidationError(
                "a calibration override is signed with the meaning 'approval'",
                field="calibration_override.signature.meaning",
            )
        registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment_id)  # 404 before the password
        signer = esign.reauthenticate(conn, settings, caller, override.signature)
    with conn.transaction():
        row, moved, made = assignments.add_assignment(
            conn, org=caller.org_id, shipment_id=shipment_id, device_id=device_id, starts=starts, ends=ends,
            actor=caller.name, override=None if override is None else override.reason,
            device_field=device_field,
        )
        if made is not None and override is not None and signer is not None:
            esign.sign(
                conn, caller, signer, override.signature, entity="calibration_override",
                key=str(made.id), action="override_calibration", record=made.signed_record(),
            )
        # the logger gets the shipment's local alarm (whichever route added it)
        configure(conn, org=caller.org_id, device_id=device_id, actor=caller.name,
                  reason=f"assigned to shipment {shipment_id}")
    return row, moved


Filter = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.get(
    "/shipments",
    tags=["shipments"],
    response_model=list[ShipmentOut],
    responses=pagination.with_pages(responses(*AUTHED)),
)
def list_shipments(
    request: Request,
    response: Response,
    conn: Conn,
    caller: Caller,
    state: Annotated[ShipmentState | None, Query()] = None,
    origin: Annotated[Filter, Query(description="the origin's name or GLN")] = None,
    destination: Annotated[Filter, Query(description="the destination's name or GLN")] = None,
    carrier: Filter = None,
    updated_since: Annotated[Moment | None, Query(description="changed at or after (RFC 3339)")] = None,
    cursor: Cursor = None,
    limit: OptionalLimit = None,
) -> list[ShipmentOut]:
    """The organization's shipments in id order, then those partners shared with it (`shared_by`,
    `scope`). With `limit` (or a `cursor`) the answer is a page of the organization's own
    shipments, the next named by `Link`/`X-Next-Cursor`; shared ones come only in the unpaged list.
    Filters apply to both."""
    after = pagination.decode("shipments", cursor)
    paged = limit is not None or cursor is not None
    size = limit if limit is not None else (pagination.DEFAULT_LIMIT if paged else None)
    filters: dict[str, Any] = {
        "state": state,
        "origin": origin,
        "destination": destination,
        "carrier": carrier,
        "updated_since": updated_since,
    }
    rows = registry.list_shipments(
        conn, org=caller.org_id, after=after, limit=None if size is None else size + 1, **filters
    )
    page = pagination.next_page(request, response, "shipments", rows, size, lambda r: r.shipment.id)
    own = [_shipment(conn, r, caller.org_id) for r in page]
    if paged:
        return own
    shared = [
        _shared(_shipment(conn, r), s)
        for r, s in partner_view.shared_shipments(conn, caller)
        if _matches(r, **filters)
    ]
    return own + shared


def _matches(rec: ShipmentRecord, **filters: Any) -> bool:
    """A partner's shipment passes the list's filters as the organization's own do in SQL."""
    if filters["state"] is not None and rec.state != filters["state"]:
        return False
    if filters["origin"] is not None and filters["origin"] not in (rec.shipment.origin, rec.origin_gln):
        return False
    dest = filters["destination"]
    if dest is not None and dest not in (rec.shipment.destination, rec.destination_gln):
        return False
    if filters["carrier"] is not None and rec.carrier != filters["carrier"]:
        return False
    since = filters["updated_since"]
    return since is None or (rec.updated_at or rec.created_at) >= since


@router.get(
    "/shipments/{shipment_id}",
    tags=["shipments"],
    response_model=ShipmentOut,
    responses=with_etag(200, responses(*AUTHED, 404)),
)
def get_shipment(shipment_id: ShipmentPath, response: Response, conn: Conn, caller: Caller) -> ShipmentOut:
    """A shipment with its lots, loggers and legs, and its `ETag` (for PATCH)."""
    org, rec, share = partner_view.shipment(conn, caller, shipment_id)
    if share is None:
        return _shipment(conn, rec, org, response)
    return _shared(_shipment(conn, rec, None, response), share)


@router.patch(
    "/shipments/{shipment_id}",
    tags=["shipments"],
    response_model=ShipmentOut,
    responses=with_etag(200, responses(*EDIT, 409)),
)
def update_shipment(
    shipment_id: ShipmentPath,
    body: ShipmentUpdate,
    response: Response,
    conn: Conn,
    caller: Caller,
    if_match: IfMatch = None,
) -> ShipmentOut:
    """Change header fields (origin, destination and their GLNs, carrier, mode, planned and
    actual times, state) and replace the legs; `If-Match` required. A state moves forward only
    (409 otherwise); an arrival before its departure is 422. Lots and loggers change elsewhere
    (POST /shipments, assignments)."""
    caller.require(Permission.REGISTER)
    accepted = accepted_versions(if_match)
    changes = {k: getattr(body, k) for k in body.model_fields_set if k != "legs"}
    legs = None if body.legs is None else [leg.model_dump() for leg in body.legs]
    current = registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment_id)
    for departure, arrival in (
        ("planned_departure", "planned_arrival"),
        ("actual_departure", "actual_arrival"),
    ):
        check_times(
            changes.get(departure, getattr(current, departure)),
            changes.get(arrival, getattr(current, arrival)),
            field=arrival,
        )
    rec = registry.update_shipment(
        conn,
        org=caller.org_id,
        shipment_id=shipment_id,
        changes=changes,
        legs=legs,
        accepted=accepted,
        actor=caller.name,
    )
    return _shipment(conn, rec, caller.org_id, response)


def _shared(doc: ShipmentOut, share: Share) -> ShipmentOut:
    """A partner's view of a shipment: who shared it and the scope."""
    return doc.model_copy(update={"shared_by": share.owner, "scope": list(share.scope)})


@router.get(
    "/profiles",
    tags=["profiles"],
    response_model=list[AlarmProfileOut],
    responses=responses(*AUTHED),
)
def list_profiles(conn: Conn, caller: Caller) -> list[AlarmProfileOut]:
    return [profile_out(p) for p in profiles.list_profiles(conn, org=caller.org_id)]


@router.get(
    "/profiles/{profile_id}",
    tags=["profiles"],
    response_model=AlarmProfileOut,
    responses=responses(*AUTHED, 404),
)
def get_profile(
    profile_id: ProfilePath,
    conn: Conn,
    caller: Caller,
    version: Annotated[int | None, Query(ge=1, le=PG_INT)] = None,
) -> AlarmProfileOut:
    return profile_out(profiles.resolve(conn, org=caller.org_id, profile_id=profile_id, version=version))


@router.post(
    "/profiles",
    tags=["profiles"],
    status_code=status.HTTP_201_CREATED,
    response_model=ProfileDraftOut,
    responses=responses(*WITH_BODY, 409),
)
def create_profile(body: AlarmProfileBody, conn: Conn, caller: Caller) -> ProfileDraftOut:
    """A new custom profile, or a new version of one (the version number is assigned here).
    Built-in preset ids are refused (409); limit ids must be unique within the profile (422).
    Alarm limits are QA's to change (segregation of duties), never ERP's or logistics'. The new
    version is a draft, in force only once a different QA person approves it
    (POST /profiles/{profile_id}/versions/{version}/approve)."""
    caller.require(Permission.CHANGE_PROFILE)
    profile = body.to_domain()
    draft = profile_changes.save_draft(conn, org=caller.org_id, profile=profile, actor=caller.name)
    shown = profile_out(AlarmProfile.from_dict(draft.body))
    return ProfileDraftOut.model_validate(
        {**shown.model_dump(), "state": draft.state, "created_by": draft.created_by}
    )


@router.put(
    "/products/{gtin}/profile",
    tags=["profiles"],
    response_model=ProductProfileOut,
    responses=responses(*WITH_BODY, 404),
)
def set_product_profile(
    gtin: GtinPath, body: ProductProfileBody, conn: Conn, caller: Caller
) -> ProductProfileOut:
    """The alarm profile shipments of this product travel under when they name none: which limits
    a product is judged by is QA's change control (as on PATCH /products/{gtin}), not the
    registrar's or the ERP's."""
    caller.require(Permission.CHANGE_PROFILE)
    normalized = normalize_gtin(check_gtin(gtin))
    profiles.set_product_default(
        conn, org=caller.org_id, gtin=normalized, profile_id=body.profile, actor=caller.name
    )
    return ProductProfileOut(gtin=normalized, profile=body.profile)
