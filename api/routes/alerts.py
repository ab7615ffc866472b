"""Alerts: the open list for dispatchers, and the lifecycle actions with who, when and why."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.schemas import (
    MAX_SAFE_INT,
    SHIPMENT_ID_PATTERN,
    AckBody,
    AlertDetail,
    AlertOut,
    AssignBody,
    CloseBody,
    alert_detail,
    alert_out,
)
from coldchain.alert_lifecycle import permission_for
from coldchain.domain import AlertState, Disposition
from storage import alerts, registry

router = APIRouter()

AlertId = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]
_ACTION = responses(*WITH_BODY, 404, 409)


@router.get("/alerts", tags=["alerts"], response_model=list[AlertOut], responses=responses(*AUTHED, 404))
def list_alerts(
    conn: Conn,
    caller: Caller,
    state: Annotated[list[AlertState] | None, Query(description="repeat for several states")] = None,
    shipment: Annotated[
        str | None, Query(pattern=SHIPMENT_ID_PATTERN, description="404 when unknown")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[AlertOut]:
    """Newest first."""
    keys = None
    if shipment is not None:
        keys = [registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment).key]
    found = alerts.list_alerts(conn, org=caller.org_id, states=state or None, shipment_keys=keys, limit=limit)
    return [alert_out(a) for a in found]


@router.get(
    "/alerts/{alert_id}",
    tags=["alerts"],
    response_model=AlertDetail,
    responses=responses(*AUTHED, 404),
)
def get_alert(alert_id: AlertId, conn: Conn, caller: Caller) -> AlertDetail:
    alert = alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)
    return alert_detail(alert, alerts.alert_history(conn, org=caller.org_id, alert_id=alert_id))


def _act(
    conn: Conn,
    caller: Caller,
    alert_id: int,
    action: str,
    comment: str | None,
    disposition: Disposition | None = None,
) -> AlertOut:
    caller.require(permission_for(action))
    alert = alerts.transition(
        conn,
        org=caller.org_id,
        alert_id=alert_id,
        action=action,
        actor=caller.name,
        comment=comment,
        disposition=disposition,
    )
    return alert_out(alert)


@router.post("/alerts/{alert_id}/ack", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def acknowledge(alert_id: AlertId, conn: Conn, caller: Caller, body: AckBody | None = None) -> AlertOut:
    """open -> acknowledged (409 from any other state)."""
    return _act(conn, caller, alert_id, "acknowledge", body.comment if body else None)


@router.post("/alerts/{alert_id}/resolve", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def resolve(alert_id: AlertId, conn: Conn, caller: Caller, body: AckBody | None = None) -> AlertOut:
    """open or acknowledged -> resolved."""
    return _act(conn, caller, alert_id, "resolve", body.comment if body else None)


@router.post("/alerts/{alert_id}/reopen", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def reopen(alert_id: AlertId, conn: Conn, caller: Caller, body: AckBody | None = None) -> AlertOut:
    """resolved -> open."""
    return _act(conn, caller, alert_id, "reopen", body.comment if body else None)


@router.post("/alerts/{alert_id}/close", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def close(alert_id: AlertId, body: CloseBody, conn: Conn, caller: Caller) -> AlertOut:
    """QA's disposition (release, quarantine or reject) with the reason: resolved -> closed."""
    return _act(conn, caller, alert_id, "close", body.comment, body.disposition)


@router.post(
    "/alerts/{alert_id}/assign",
    tags=["alerts"],
    response_model=AlertOut,
    responses=responses(*WITH_BODY, 404),
)
def assign(alert_id: AlertId, body: AssignBody, conn: Conn, caller: Caller) -> AlertOut:
    caller.require(permission_for("acknowledge"))
    return alert_out(
        alerts.assign(conn, org=caller.org_id, alert_id=alert_id, assignee=body.assignee, actor=caller.name)
    )
