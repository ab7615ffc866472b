"""Alerts: the open list for dispatchers, and the lifecycle actions with who, when and why."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api import esign, partner_view
from api.deps import AppSettings, Caller, Conn
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
from storage import alerts, registry, signatures

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
    signed = signatures.for_records(conn, org=caller.org_id, entity="alert", keys=[str(a.id) for a in found])
    if shipment is None:  # a partner also sees the alerts of shipments shared with "alerts"
        found += partner_view.shared_alerts(conn, caller, state or None, limit)
    # Every view of a signed record shows its signatures (Part 11 §11.50); GET /alerts/{id} checks them.
    return [alert_out(a, signed.get(str(a.id), [])) for a in found]


@router.get(
    "/alerts/{alert_id}",
    tags=["alerts"],
    response_model=AlertDetail,
    responses=responses(*AUTHED, 404),
)
def get_alert(alert_id: AlertId, conn: Conn, caller: Caller) -> AlertDetail:
    """An alert with its history, the profile it was judged under and its checked signatures."""
    org = partner_view.alert_org(conn, caller, alert_id, need="alerts")
    alert = alerts.get_alert(conn, org=org, alert_id=alert_id)
    record = esign.alert_record(conn, org=org, alert=alert)
    return alert_detail(
        alert,
        alerts.alert_history(conn, org=org, alert_id=alert_id),
        signatures=esign.shown(conn, org=org, entity="alert", key=str(alert_id), record=record),
        profile_body=alerts.profile_body(conn, org=org, alert_id=alert_id),
    )


def _act(
    conn: Conn,
    caller: Caller,
    alert_id: int,
    action: str,
    comment: str | None,
    disposition: Disposition | None = None,
    org: int | None = None,
) -> AlertOut:
    caller.require(permission_for(action))
    alert = alerts.transition(
        conn,
        org=caller.org_id if org is None else org,
        alert_id=alert_id,
        action=action,
        actor=caller.name,
        comment=comment,
        disposition=disposition,
    )
    return alert_out(alert)


@router.post("/alerts/{alert_id}/ack", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def acknowledge(alert_id: AlertId, conn: Conn, caller: Caller, body: AckBody | None = None) -> AlertOut:
    """open -> acknowledged (409 from any other state); a partner may, on a share with "acknowledge"."""
    caller.require(permission_for("acknowledge"))
    org = partner_view.alert_org(conn, caller, alert_id, need="acknowledge")  # or a partner's share
    return _act(conn, caller, alert_id, "acknowledge", body.comment if body else None, org=org)


@router.post("/alerts/{alert_id}/resolve", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def resolve(alert_id: AlertId, conn: Conn, caller: Caller, body: AckBody | None = None) -> AlertOut:
    """open or acknowledged -> resolved."""
    return _act(conn, caller, alert_id, "resolve", body.comment if body else None)


@router.post("/alerts/{alert_id}/reopen", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def reopen(alert_id: AlertId, conn: Conn, caller: Caller, body: AckBody | None = None) -> AlertOut:
    """resolved -> open."""
    return _act(conn, caller, alert_id, "reopen", body.comment if body else None)


@router.post("/alerts/{alert_id}/close", tags=["alerts"], response_model=AlertOut, responses=_ACTION)
def close(alert_id: AlertId, body: CloseBody, conn: Conn, caller: Caller, settings: AppSettings) -> AlertOut:
    """QA's disposition (release, quarantine or reject) with the reason: resolved -> closed, under
    the signer's e-signature (password re-entered; API keys cannot sign: 403)."""
    caller.require(permission_for("close"))
    signature = esign.require(body.signature)
    alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)  # 404 before a password is spent
    signer = esign.reauthenticate(conn, settings, caller, signature)
    with conn.transaction():
        _act(conn, caller, alert_id, "close", body.comment, Disposition(body.disposition))
        closed = alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)
        record = esign.alert_record(conn, org=caller.org_id, alert=closed)
        signed = esign.sign(
            conn, caller, signer, signature, entity="alert", key=str(alert_id), action="close", record=record
        )
    return alert_out(closed, [signed])


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
