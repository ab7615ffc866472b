"""ERP outbound routes: the organization's ERP connections (administrators), the delivery state of
what was pushed about a record and a retry of a failed delivery, and a shipment's ERP reference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from api.deps import AppSettings, Caller, Conn
from api.erp_schemas import (
    CONNECTION_ID_PATTERN,
    RECORD_PATTERN,
    DeliveryState,
    ErpConnectionBody,
    ErpConnectionOut,
    ErpDeliveryOut,
    ErpRefBody,
    ErpRefOut,
    connection_out,
    delivery_out,
)
from api.errors import AUTHED, WITH_BODY, responses
from api.schemas import MAX_SAFE_INT, SHIPMENT_SEGMENT_PATTERN
from api.webhook_policy import check_webhook_url
from coldchain.access import Permission
from coldchain.errors import ValidationError
from erp import credentials
from storage import erp_outbox

router = APIRouter(tags=["erp"])

ConnectionPath = Annotated[str, Path(pattern=CONNECTION_ID_PATTERN, examples=["odoo-prod"])]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]
ShipmentPath = Annotated[str, Path(pattern=SHIPMENT_SEGMENT_PATTERN, examples=["SO-1001"])]


def _options(body: ErpConnectionBody) -> dict[str, Any]:
    """The non-secret settings each kind needs (a cross-field rule: 422 names the missing one)."""
    if body.kind == "odoo":
        if not body.database:
            raise ValidationError("an Odoo connection needs its database", field="database")
        if not body.login:
            raise ValidationError("an Odoo connection needs the login of its user", field="login")
        return {"database": body.database, "login": body.login}
    if body.kind == "erpnext":
        if not body.api_key:
            raise ValidationError("an ERPNext connection needs its API key", field="api_key")
        return {"api_key": body.api_key}
    if body.database or body.login or body.api_key:
        raise ValidationError("a webhook connection takes only a URL and a secret", field="kind")
    return {}


@router.get("/erp/connections", response_model=list[ErpConnectionOut], responses=responses(*AUTHED))
def list_erp_connections(conn: Conn, caller: Caller) -> list[ErpConnectionOut]:
    caller.require(Permission.ADMINISTER)
    return [connection_out(r) for r in erp_outbox.list_connections(conn, org=caller.org_id)]


@router.get(
    "/erp/connections/{connection_id}", response_model=ErpConnectionOut, responses=responses(*AUTHED, 404)
)
def get_erp_connection(connection_id: ConnectionPath, conn: Conn, caller: Caller) -> ErpConnectionOut:
    caller.require(Permission.ADMINISTER)
    row = erp_outbox.get_connection(conn, org=caller.org_id, connection_id=connection_id)
    assert row is not None
    return connection_out(row)


@router.put(
    "/erp/connections/{connection_id}", response_model=ErpConnectionOut, responses=responses(*WITH_BODY)
)
def put_erp_connection(
    connection_id: ConnectionPath, body: ErpConnectionBody, conn: Conn, caller: Caller, settings: AppSettings
) -> ErpConnectionOut:
    """Create or replace a connection. Its URL passes the same address policy as notification
    webhooks (https, public addresses only); the secret is stored encrypted and never returned."""
    caller.require(Permission.ADMINISTER)
    options = _options(body)
    try:
        check_webhook_url(body.url, allow_private=settings.webhook_allow_private)
    except ValidationError as exc:
        raise ValidationError(str(exc), field="url") from None
    except ValueError:  # urlsplit refuses it (an unbalanced IPv6 bracket)
        raise ValidationError("the URL cannot be parsed", field="url") from None
    old = erp_outbox.get_connection(conn, org=caller.org_id, connection_id=connection_id, missing_ok=True)
    if body.secret is None and (old is None or old.kind != body.kind):
        raise ValidationError("a new connection (or a new kind) needs its secret", field="secret")
    sealed = None
    if body.secret is not None:
        sealed = credentials.seal(
            settings.require_secret_key(),
            org_id=caller.org_id,
            connection_id=connection_id,
            secret=body.secret,
        )
    row = erp_outbox.put_connection(
        conn,
        org=caller.org_id,
        connection_id=connection_id,
        kind=body.kind,
        url=body.url,
        options=options,
        sealed_secret=sealed,
        events=list(body.events),
        enabled=body.enabled,
        actor=caller.name,
    )
    return connection_out(row)


@router.delete(
    "/erp/connections/{connection_id}",
    status_code=204,
    response_class=Response,
    responses=responses(*AUTHED, 404),
)
def delete_erp_connection(connection_id: ConnectionPath, conn: Conn, caller: Caller) -> Response:
    caller.require(Permission.ADMINISTER)
    erp_outbox.delete_connection(conn, org=caller.org_id, connection_id=connection_id, actor=caller.name)
    return Response(status_code=204)


@router.get("/erp/deliveries", response_model=list[ErpDeliveryOut], responses=responses(*AUTHED))
def list_erp_deliveries(
    conn: Conn,
    caller: Caller,
    record: Annotated[
        str | None,
        Query(
            pattern=RECORD_PATTERN,
            description="shipment:ID, alert:ID or recall:ID",
            examples=["shipment:SO-1001"],
        ),
    ] = None,
    state: DeliveryState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[ErpDeliveryOut]:
    """What was pushed to the ERP (about one record, if named), newest first, with its state."""
    caller.require(Permission.READ)
    shipment = alert = recall = None
    if record is not None:
        kind, _, ident = record.partition(":")
        if kind == "shipment":
            shipment = ident
        elif kind == "alert":
            alert = int(ident)
        else:
            recall = int(ident)
    rows = erp_outbox.deliveries(
        conn,
        org=caller.org_id,
        shipment_id=shipment,
        alert_id=alert,
        recall_id=recall,
        state=state,
        limit=limit,
    )
    return [delivery_out(r) for r in rows]


@router.post(
    "/erp/deliveries/{delivery_id}/retry",
    response_model=ErpDeliveryOut,
    responses=responses(*AUTHED, 404, 409),
)
def retry_erp_delivery(delivery_id: DeliveryId, conn: Conn, caller: Caller) -> ErpDeliveryOut:
    """Send a failed delivery again now, with its attempts counted from zero."""
    caller.require(Permission.ADMINISTER)
    row = erp_outbox.retry(
        conn, org=caller.org_id, delivery_id=delivery_id, now=datetime.now(UTC), actor=caller.name
    )
    return delivery_out(row)


@router.put(
    "/erp/shipments/{shipment_id}/reference", response_model=ErpRefOut, responses=responses(*WITH_BODY, 404)
)
def put_erp_reference(shipment_id: ShipmentPath, body: ErpRefBody, conn: Conn, caller: Caller) -> ErpRefOut:
    """Set the shipment's record in the ERP that events are pushed to (else its id is used)."""
    caller.require(Permission.REGISTER)
    erp_outbox.set_shipment_ref(
        conn, org=caller.org_id, shipment_id=shipment_id, erp_ref=body.erp_ref, actor=caller.name
    )
    return ErpRefOut(shipment=shipment_id, erp_ref=body.erp_ref)
