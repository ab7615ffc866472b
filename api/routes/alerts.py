"""Alerts: the open list for dispatchers, and the lifecycle actions with who, when and why."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import esign, partner_view
from api.deps import AppSettings, Caller, Conn
from api.schemas import AckBody, AssignBody, CloseBody, alert_public
from coldchain.alert_lifecycle import permission_for
from coldchain.domain import AlertState, Disposition
from coldchain.errors import ValidationError
from storage import alerts, registry, signatures

router = APIRouter()


@router.get("/alerts")
def list_alerts(
    conn: Conn,
    caller: Caller,
    state: Annotated[list[str] | None, Query()] = None,
    shipment: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    try:
        states = [AlertState(s) for s in state] if state else None
    except ValueError:
        raise ValidationError(
            "state must be one of open, acknowledged, resolved, closed", field="state"
        ) from None
    keys = None
    if shipment is not None:
        keys = [registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment).key]
    found = alerts.list_alerts(conn, org=caller.org_id, states=states, shipment_keys=keys, limit=limit)
    signed = signatures.for_records(conn, org=caller.org_id, entity="alert", keys=[str(a.id) for a in found])
    if shipment is None:  # a partner also sees the alerts of shipments shared with "alerts"
        found += partner_view.shared_alerts(conn, caller, states, limit)
    # Every view of a signed record shows its signatures (Part 11 §11.50); GET /alerts/{id} checks them.
    return [{**alert_public(a), "signatures": [s.public() for s in signed.get(str(a.id), [])]} for a in found]


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: int, conn: Conn, caller: Caller) -> dict[str, Any]:
    org = partner_view.alert_org(conn, caller, alert_id, need="alerts")
    alert = alerts.get_alert(conn, org=org, alert_id=alert_id)
    doc = alert_public(alert)
    doc["history"] = alerts.alert_history(conn, org=org, alert_id=alert_id)
    doc["profile_body"] = alerts.profile_body(conn, org=org, alert_id=alert_id)
    record = esign.alert_record(conn, org=org, alert=alert)
    doc["signatures"] = esign.shown(conn, org=org, entity="alert", key=str(alert_id), record=record)
    return doc


def _act(
    conn: Conn,
    caller: Caller,
    alert_id: int,
    action: str,
    comment: str | None,
    disposition: Disposition | None = None,
    org: int | None = None,
) -> dict[str, Any]:
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
    return alert_public(alert)


@router.post("/alerts/{alert_id}/ack")
def acknowledge(alert_id: int, conn: Conn, caller: Caller, body: AckBody | None = None) -> dict[str, Any]:
    caller.require(permission_for("acknowledge"))
    org = partner_view.alert_org(conn, caller, alert_id, need="acknowledge")  # or a partner's share
    return _act(conn, caller, alert_id, "acknowledge", body.comment if body else None, org=org)


@router.post("/alerts/{alert_id}/resolve")
def resolve(alert_id: int, conn: Conn, caller: Caller, body: AckBody | None = None) -> dict[str, Any]:
    return _act(conn, caller, alert_id, "resolve", body.comment if body else None)


@router.post("/alerts/{alert_id}/reopen")
def reopen(alert_id: int, conn: Conn, caller: Caller, body: AckBody | None = None) -> dict[str, Any]:
    return _act(conn, caller, alert_id, "reopen", body.comment if body else None)


@router.post("/alerts/{alert_id}/close")
def close(
    alert_id: int, body: CloseBody, conn: Conn, caller: Caller, settings: AppSettings
) -> dict[str, Any]:
    """QA's disposition (release, quarantine or reject) with the reason, closing the alert, under
    the signer's e-signature (password re-entered; API keys cannot sign)."""
    caller.require(permission_for("close"))
    signature = esign.require(body.signature)
    alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)  # 404 before a password is spent
    signer = esign.reauthenticate(conn, settings, caller, signature)
    with conn.transaction():
        doc = _act(conn, caller, alert_id, "close", body.comment, Disposition(body.disposition))
        closed = alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)
        record = esign.alert_record(conn, org=caller.org_id, alert=closed)
        signed = esign.sign(
            conn, caller, signer, signature, entity="alert", key=str(alert_id), action="close", record=record
        )
    doc["signatures"] = [signed.public()]
    return doc


@router.post("/alerts/{alert_id}/assign")
def assign(alert_id: int, body: AssignBody, conn: Conn, caller: Caller) -> dict[str, Any]:
    caller.require(permission_for("acknowledge"))
    return alert_public(
        alerts.assign(conn, org=caller.org_id, alert_id=alert_id, assignee=body.assignee, actor=caller.name)
    )
