"""Master data one record at a time: products, their lots, sites, shipment edits and device
assignments. Created, read, listed (filters, cursor pages) and edited under optimistic
concurrency: every answer carries the record's `ETag`, every edit needs it in `If-Match`.

Master data is registered by logistics, the ERP and admins (`register`); what decides alarms and
budgets (a product's labelled range, default profile, stability budget, activation energy, a
lot's stability budget) is changed afterwards by QA only (`change_profile`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import BaseModel

from api import pagination
from api.concurrency import IfMatch, accepted_versions, set_etag, with_etag
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, EDIT, WITH_BODY, responses
from api.pagination import Cursor, Limit
from api.routes.device_config import configure
from api.routes.registry import add_logger
from api.schemas import (
    GTIN_PATTERN,
    LOT_SEGMENT_PATTERN,
    SHIPMENT_SEGMENT_PATTERN,
    AssignmentCreate,
    AssignmentRecordOut,
    AssignmentUpdate,
    Day,
    LotCreate,
    LotRecordOut,
    LotUpdate,
    ProductCreate,
    ProductOut,
    ProductUpdate,
    SiteCreate,
    SiteOut,
    SiteUpdate,
    check_gtin,
)
from coldchain.access import Permission, Principal
from coldchain.gs1 import normalize_gtin
from coldchain.master_data import check_gln, check_labelled_range
from rules.runner import RunStats, check_lot_budgets
from storage import assignments, products, profiles, registry, sites
from storage.assignments import AssignmentRow
from storage.products import ProductRow
from storage.registry import LotMasterRow
from storage.sites import SiteRow

router = APIRouter()

GtinPath = Annotated[
    str, Path(pattern=GTIN_PATTERN, examples=["09506000134352"], json_schema_extra={"format": "gtin"})
]
GlnPath = Annotated[
    str, Path(pattern=r"^[0-9]{13}$", examples=["9520123456788"], json_schema_extra={"format": "gln"})
]
LotPath = Annotated[str, Path(pattern=LOT_SEGMENT_PATTERN, examples=["A123"])]
ShipmentPath = Annotated[str, Path(pattern=SHIPMENT_SEGMENT_PATTERN, examples=["SO-1001"])]
AssignmentPath = Annotated[int, Path(ge=1, le=2**53 - 1)]
Prefix = Annotated[
    str | None,
    Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$", description="names starting so"),
]

# What decides alarms and budgets: QA's to change once the record exists (segregation of duties).
PRODUCT_QA_FIELDS = frozenset(
    {"range_min_c", "range_max_c", "default_profile", "stability_budget_s", "activation_energy_kj_mol"}
)
LOT_QA_FIELDS = frozenset({"stability_budget_s"})

_LIST = pagination.with_pages(responses(*AUTHED))
_LIST_IN = pagination.with_pages(responses(*AUTHED, 404))


def require_edit(caller: Principal, fields: set[str], qa_fields: frozenset[str]) -> None:
    """Changing what alarms are judged by needs change_profile (QA); anything else register."""
    if fields & qa_fields:
        caller.require(Permission.CHANGE_PROFILE)
    if fields - qa_fields or not fields:
        caller.require(Permission.REGISTER)


def changes_of(body: BaseModel) -> dict[str, Any]:
    """The fields the request sent (null included: clear it); absent ones stay as they are."""
    return {name: getattr(body, name) for name in body.model_fields_set}


def _gtin(gtin: str) -> str:
    return normalize_gtin(check_gtin(gtin))


def _gln(gln: str) -> str:
    return check_gln(gln, field="gln")


# -- products ----------------------------------------------------------------------------------


def _product(row: ProductRow, response: Response) -> ProductOut:
    set_etag(response, row.version)
    return ProductOut.model_validate(row, from_attributes=True)


@router.get("/products", tags=["master data"], response_model=list[ProductOut], responses=_LIST)
def list_products(
    request: Request,
    response: Response,
    conn: Conn,
    caller: Caller,
    name_prefix: Prefix = None,
    cursor: Cursor = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
) -> list[ProductOut]:
    """Products in GTIN order, a page at a time (`Link`/`X-Next-Cursor` name the next page)."""
    caller.require(Permission.READ)
    after = pagination.decode("products", cursor)
    rows = products.list_products(
        conn, org=caller.org_id, name_prefix=name_prefix, after=after, limit=limit + 1
    )
    page = pagination.next_page(request, response, "products", rows, limit, lambda r: r.gtin)
    return [ProductOut.model_validate(r, from_attributes=True) for r in page]


@router.post(
    "/products",
    tags=["master data"],
    status_code=status.HTTP_201_CREATED,
    response_model=ProductOut,
    responses=with_etag(201, responses(*WITH_BODY, 404, 409)),
)
def create_product(body: ProductCreate, response: Response, conn: Conn, caller: Caller) -> ProductOut:
    """A product (409 when its GTIN is registered; an unknown `default_profile` is 404)."""
    caller.require(Permission.REGISTER)
    values = body.model_dump(exclude={"gtin"})
    if body.default_profile is not None:
        profiles.resolve(conn, org=caller.org_id, profile_id=body.default_profile)
    row = products.create_product(
        conn, org=caller.org_id, gtin=normalize_gtin(body.gtin), values=values, actor=caller.name
    )
    return _product(row, response)


@router.get(
    "/products/{gtin}",
    tags=["master data"],
    response_model=ProductOut,
    responses=with_etag(200, responses(*AUTHED, 404)),
)
def get_product(gtin: GtinPath, response: Response, conn: Conn, caller: Caller) -> ProductOut:
    caller.require(Permission.READ)
    return _product(products.get_product(conn, org=caller.org_id, gtin=_gtin(gtin)), response)


@router.patch(
    "/products/{gtin}",
    tags=["master data"],
    response_model=ProductOut,
    responses=with_etag(200, responses(*EDIT)),
)
def update_product(
    gtin: GtinPath,
    body: ProductUpdate,
    response: Response,
    conn: Conn,
    caller: Caller,
    if_match: IfMatch = None,
) -> ProductOut:
    """Change some fields (`If-Match` required). The labelled range, default profile, stability
    budget and activation energy are QA's to change; the rest register's. The range stays
    ordered (422); an unknown profile is 404."""
    changes = changes_of(body)
    require_edit(caller, set(changes), PRODUCT_QA_FIELDS)
    accepted = accepted_versions(if_match)
    normalized = _gtin(gtin)
    if "range_min_c" in changes or "range_max_c" in changes:
        current = products.get_product(conn, org=caller.org_id, gtin=normalized)
        check_labelled_range(
            changes.get("range_min_c", current.range_min_c), changes.get("range_max_c", current.range_max_c)
        )
    if changes.get("default_profile") is not None:
        profiles.resolve(conn, org=caller.org_id, profile_id=changes["default_profile"])
    row = products.update_product(
        conn, org=caller.org_id, gtin=normalized, changes=changes, accepted=accepted, actor=caller.name
    )
    return _product(row, response)


# -- lots of a product ---------------------------------------------------------------------------


def _lot(row: LotMasterRow, response: Response) -> LotRecordOut:
    set_etag(response, row.version)
    return LotRecordOut.model_validate(row, from_attributes=True)


@router.get(
    "/products/{gtin}/lots", tags=["master data"], response_model=list[LotRecordOut], responses=_LIST_IN
)
def list_lots(
    gtin: GtinPath,
    request: Request,
    response: Response,
    conn: Conn,
    caller: Caller,
    expires_from: Annotated[Day | None, Query(description="expiry on or after (YYYY-MM-DD)")] = None,
    expires_before: Annotated[Day | None, Query(description="expiry before (YYYY-MM-DD)")] = None,
    cursor: Cursor = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
) -> list[LotRecordOut]:
    """A product's lots in lot order, optionally by expiry; 404 for an unknown product."""
    caller.require(Permission.READ)
    normalized = _gtin(gtin)
    products.get_product(conn, org=caller.org_id, gtin=normalized)
    after = pagination.decode("lots", cursor)
    rows = registry.list_lots(
        conn,
        org=caller.org_id,
        gtin=normalized,
        expires_from=expires_from,
        expires_before=expires_before,
        after=after,
        limit=limit + 1,
    )
    page = pagination.next_page(request, response, "lots", rows, limit, lambda r: r.lot)
    return [LotRecordOut.model_validate(r, from_attributes=True) for r in page]


@router.post(
    "/products/{gtin}/lots",
    tags=["master data"],
    status_code=status.HTTP_201_CREATED,
    response_model=LotRecordOut,
    responses=with_etag(201, responses(*WITH_BODY, 404, 409)),
)
def create_lot(
    gtin: GtinPath, body: LotCreate, response: Response, conn: Conn, caller: Caller
) -> LotRecordOut:
    """A lot of a registered product (404 otherwise; 409 when the lot exists). Without a
    `stability_budget_s` it takes its product's."""
    caller.require(Permission.REGISTER)
    values = {**body.model_dump(), "gtin": _gtin(gtin)}
    return _lot(registry.create_lot(conn, org=caller.org_id, values=values, actor=caller.name), response)


@router.get(
    "/products/{gtin}/lots/{lot}",
    tags=["master data"],
    response_model=LotRecordOut,
    responses=with_etag(200, responses(*AUTHED, 404)),
)
def get_lot_record(
    gtin: GtinPath, lot: LotPath, response: Response, conn: Conn, caller: Caller
) -> LotRecordOut:
    """The lot's own values (its journey and figures: GET /lots/{gtin}/{lot})."""
    caller.require(Permission.READ)
    return _lot(registry.get_lot_master(conn, org=caller.org_id, gtin=_gtin(gtin), lot=lot), response)


@router.patch(
    "/products/{gtin}/lots/{lot}",
    tags=["master data"],
    response_model=LotRecordOut,
    responses=with_etag(200, responses(*EDIT)),
)
def update_lot(
    gtin: GtinPath,
    lot: LotPath,
    body: LotUpdate,
    response: Response,
    conn: Conn,
    caller: Caller,
    if_match: IfMatch = None,
) -> LotRecordOut:
    """Change expiry, quantity or serials (register), or the stability budget (QA); `If-Match`
    required. A new budget is weighed at once against what the lot has spent: a budget alert
    opens when it is used up."""
    changes = changes_of(body)
    require_edit(caller, set(changes), LOT_QA_FIELDS)
    accepted = accepted_versions(if_match)
    normalized = _gtin(gtin)
    with conn.transaction():
        row = registry.update_lot(
            conn,
            org=caller.org_id,
            gtin=normalized,
            lot=lot,
            changes=changes,
            accepted=accepted,
            actor=caller.name,
        )
        if "stability_budget_s" in changes:
            journey = registry.get_lot(conn, org=caller.org_id, gtin=normalized, lot=lot)
            if journey.shipment_keys:
                check_lot_budgets(conn, list(journey.shipment_keys), RunStats())
    return _lot(row, response)


# -- sites ---------------------------------------------------------------------------------------


def _site(row: SiteRow, response: Response) -> SiteOut:
    set_etag(response, row.version)
    return SiteOut.model_validate(row, from_attributes=True)


@router.get("/sites", tags=["master data"], response_model=list[SiteOut], responses=_LIST)
def list_sites(
    request: Request,
    response: Response,
    conn: Conn,
    caller: Caller,
    name_prefix: Prefix = None,
    cursor: Cursor = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
) -> list[SiteOut]:
    caller.require(Permission.READ)
    after = pagination.decode("sites", cursor)
    rows = sites.list_sites(conn, org=caller.org_id, name_prefix=name_prefix, after=after, limit=limit + 1)
    page = pagination.next_page(request, response, "sites", rows, limit, lambda r: r.gln)
    return [SiteOut.model_validate(r, from_attributes=True) for r in page]


@router.post(
    "/sites",
    tags=["master data"],
    status_code=status.HTTP_201_CREATED,
    response_model=SiteOut,
    responses=with_etag(201, responses(*WITH_BODY, 409)),
)
def create_site(body: SiteCreate, response: Response, conn: Conn, caller: Caller) -> SiteOut:
    caller.require(Permission.REGISTER)
    row = sites.create_site(
        conn, org=caller.org_id, gln=body.gln, name=body.name, address=body.address, actor=caller.name
    )
    return _site(row, response)


@router.get(
    "/sites/{gln}",
    tags=["master data"],
    response_model=SiteOut,
    responses=with_etag(200, responses(*AUTHED, 404)),
)
def get_site(gln: GlnPath, response: Response, conn: Conn, caller: Caller) -> SiteOut:
    caller.require(Permission.READ)
    return _site(sites.get_site(conn, org=caller.org_id, gln=_gln(gln)), response)


@router.patch(
    "/sites/{gln}", tags=["master data"], response_model=SiteOut, responses=with_etag(200, responses(*EDIT))
)
def update_site(
    gln: GlnPath, body: SiteUpdate, response: Response, conn: Conn, caller: Caller, if_match: IfMatch = None
) -> SiteOut:
    caller.require(Permission.REGISTER)
    accepted = accepted_versions(if_match)
    row = sites.update_site(
        conn, org=caller.org_id, gln=_gln(gln), changes=changes_of(body), accepted=accepted, actor=caller.name
    )
    return _site(row, response)


# -- device assignments --------------------------------------------------------------------------


def _assignment(row: AssignmentRow, response: Response, relinked: int | None = None) -> AssignmentRecordOut:
    set_etag(response, row.version)
    return AssignmentRecordOut.model_validate(
        {
            "id": row.id,
            "device": row.device,
            "shipment": row.shipment,
            "from": row.starts,
            "to": row.ends,
            "version": row.version,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "readings_relinked": relinked,
        }
    )


@router.get(
    "/shipments/{shipment_id}/assignments",
    tags=["shipments"],
    response_model=list[AssignmentRecordOut],
    responses=responses(*AUTHED, 404),
)
def list_assignments(shipment_id: ShipmentPath, conn: Conn, caller: Caller) -> list[AssignmentRecordOut]:
    """The shipment's loggers and their windows, each with its id and version."""
    caller.require(Permission.READ)
    rows = assignments.list_assignments(conn, org=caller.org_id, shipment_id=shipment_id)
    return [_assignment(r, Response()) for r in rows]


@router.post(
    "/shipments/{shipment_id}/assignments",
    tags=["shipments"],
    status_code=status.HTTP_201_CREATED,
    response_model=AssignmentRecordOut,
    responses=with_etag(201, responses(*WITH_BODY, 404, 409)),
)
def add_assignment(
    shipment_id: ShipmentPath,
    body: AssignmentCreate,
    response: Response,
    conn: Conn,
    caller: Caller,
    settings: AppSettings,
) -> AssignmentRecordOut:
    """A logger rides with the shipment from `from` (to `to`). Readings it already stored in the
    window join the shipment and the rules judge them. An unregistered device or `to` not after
    `from` is 422; a window overlapping another of the logger is 409, naming it; a logger out of
    calibration on `from` is 409 unless QA's signed `calibration_override` comes with it (then a
    person holding `qa` adds it alone, as with POST /shipments/{shipment_id}/devices: one
    implementation for both)."""
    row, moved = add_logger(
        conn, settings, caller, shipment_id=shipment_id, device_id=body.device, starts=body.from_,
        ends=body.to, override=body.calibration_override,
    )
    return _assignment(row, response, moved.readings)


@router.get(
    "/assignments/{assignment_id}",
    tags=["shipments"],
    response_model=AssignmentRecordOut,
    responses=with_etag(200, responses(*AUTHED, 404)),
)
def get_assignment(
    assignment_id: AssignmentPath, response: Response, conn: Conn, caller: Caller
) -> AssignmentRecordOut:
    caller.require(Permission.READ)
    return _assignment(
        assignments.get_assignment(conn, org=caller.org_id, assignment_id=assignment_id), response
    )


@router.patch(
    "/assignments/{assignment_id}",
    tags=["shipments"],
    response_model=AssignmentRecordOut,
    responses=with_etag(200, responses(*EDIT, 409)),
)
def correct_assignment(
    assignment_id: AssignmentPath,
    body: AssignmentUpdate,
    response: Response,
    conn: Conn,
    caller: Caller,
    if_match: IfMatch = None,
) -> AssignmentRecordOut:
    """End (`to`), correct (`from`, `to`) or move (`shipment`) an assignment; `If-Match` required.
    The logger's readings in the old and the new window are linked again to the shipment whose
    window holds them, and the rules judge both series again, so alerts appear or are resolved.
    `to` not after `from` is 422; overlapping another window of the logger 409."""
    caller.require(Permission.REGISTER)
    accepted = accepted_versions(if_match)
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        key = "from" if name == "from_" else name
        if key != "reason":
            changes[key] = getattr(body, name)
    with conn.transaction():
        before = assignments.get_assignment(conn, org=caller.org_id, assignment_id=assignment_id)
        row, moved = assignments.correct_assignment(
            conn,
            org=caller.org_id,
            assignment_id=assignment_id,
            changes=changes,
            accepted=accepted,
            actor=caller.name,
            reason=body.reason,
        )
        if row.version != before.version:  # a change: the device's config follows its ride
            configure(conn, org=caller.org_id, device_id=row.device, actor=caller.name,
                      reason=f"assignment {assignment_id} corrected")
    return _assignment(row, response, moved.readings)
