"""The signing service routes call for a QA decision (21 CFR Part 11): re-enter the password,
then sign the record as it stands after the act, in the act's own transaction.

    signer = esign.reauthenticate(conn, settings, caller, body.signature)   # outside the transaction
    with conn.transaction():
        ...the act...
        esign.sign(conn, caller, signer, body.signature, entity=..., key=..., action=..., record=...)

`record` is the signed record's canonical content; every later view rebuilds it the same way and
shows the signature `broken` when it no longer matches.
"""

from __future__ import annotations

from typing import Any

import psycopg

from api import identity
from api.schemas import SignatureIn
from coldchain.access import Principal, PrincipalKind
from coldchain.domain import Alert
from coldchain.errors import PermissionDeniedError, ValidationError
from coldchain.esignature import Signature
from coldchain.settings import Settings
from storage import alerts, audit, lot_budget, recalls, signatures, users


def require(signature: SignatureIn | None) -> SignatureIn:
    if signature is None:
        raise ValidationError(
            'this decision needs an e-signature: {"signature": {"password", "meaning"}}', field="signature"
        )
    return signature


def reauthenticate(
    conn: psycopg.Connection, settings: Settings, caller: Principal, signature: SignatureIn
) -> users.UserRow:
    """The signer, after the password was entered again; machines are refused (keys cannot sign)."""
    if caller.kind is not PrincipalKind.USER or caller.user_id is None:
        raise PermissionDeniedError("an API key cannot sign; a person signs in and re-enters the password")
    return users.check_password(
        conn,
        user_id=caller.user_id,
        password=signature.password,
        hashing=identity.hashing(settings),
        lockout=identity.lockout(settings),
        purpose="signature",
    )


def sign(
    conn: psycopg.Connection,
    caller: Principal,
    signer: users.UserRow,
    signature: SignatureIn,
    *,
    entity: str,
    key: str,
    action: str,
    record: dict[str, Any],
) -> Signature:
    return signatures.add(
        conn,
        org=caller.org_id,
        entity=entity,
        key=key,
        action=action,
        user_id=signer.id,
        signer_name=signer.printed_name,
        signer_email=signer.email,
        meaning=signature.meaning,
        signed_record=record,
    )


def shown(
    conn: psycopg.Connection, *, org: int, entity: str, key: str, record: dict[str, Any]
) -> list[Signature]:
    """The record's signatures as every view shows them, checked against the record now."""
    return signatures.for_record(conn, org=org, entity=entity, key=key, current_record=record)


# --------------------------------------------------------------------------- signed records


def alert_record(conn: psycopg.Connection, *, org: int, alert: Alert) -> dict[str, Any]:
    """A closed alert as its disposition signature covers it: the excursion, the decision and why."""
    closing = [e for e in alerts.alert_history(conn, org=org, alert_id=alert.id) if e["action"] == "close"]
    last = closing[-1] if closing else None
    return {
        "entity": "alert",
        "id": alert.id,
        "organization": alert.organization,
        "kind": alert.kind,
        "severity": alert.severity.value,
        "state": alert.state.value,
        "device": alert.device_id,
        "shipment": alert.shipment_id,
        "limit": alert.limit_id,
        "profile": alert.profile_id,
        "profile_version": alert.profile_version,
        "message": alert.message,
        "started_at": alert.started_at,
        "ended_at": alert.ended_at,
        "peak_c": alert.peak_c,
        "closed_at": alert.closed_at,
        "disposition": alert.disposition.value if alert.disposition else None,
        "lots": [{"gtin": g, "lot": lot} for g, lot in alert.lots],
        "close": None
        if last is None
        else {"at": last["at"], "by": last["actor"], "comment": last["comment"]},
        "profile_body": alerts.profile_body(conn, org=org, alert_id=alert.id),  # the limits judged by
    }


def credit_record(gtin: str, lot: str, credit: dict[str, Any]) -> dict[str, Any]:
    """A stability-budget credit as its signature covers it."""
    return {
        "entity": "lot_budget_credit",
        "gtin": gtin,
        "lot": lot,
        "id": credit["id"],
        "seconds": credit["seconds"],
        "reason": credit["reason"],
        "alert_id": credit["alert_id"],
        "credited_by": credit["credited_by"],
        "credited_at": credit["credited_at"],
    }


def credit_records(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> dict[int, dict[str, Any]]:
    return {
        c["id"]: credit_record(gtin, lot, c) for c in lot_budget.credits(conn, org=org, gtin=gtin, lot=lot)
    }


def recall_record(conn: psycopg.Connection, *, org: int, recall_id: int) -> dict[str, Any]:
    """A closed recall as its closing signature covers it: what was recalled and why, its impact
    as recorded at opening, every consignee's answer, the response time, and who closed it."""
    rec = recalls.get_recall(conn, org=org, recall_id=recall_id)
    closing = [e for e in audit.trail(conn, org, "recall", str(recall_id)) if e["action"] == "close"]
    return {
        "entity": "recall",
        "id": rec.id,
        "state": rec.state,
        "reason": rec.reason,
        "classification": rec.classification,
        "criteria": rec.criteria,
        "impact": rec.impact,
        "opened_at": rec.opened_at,
        "opened_by": rec.opened_by,
        "consignees": [
            {
                "id": c.id,
                "shipment": c.shipment_id,
                "consignee": c.consignee,
                "consignee_gln": c.consignee_gln,
                "quantity": c.quantity,
                "notified_at": c.notified_at,
                "acknowledged_at": c.acknowledged_at,
                "acknowledged_by": c.acknowledged_by,
                "quarantined": c.quarantined,
                "returned": c.returned,
            }
            for c in rec.consignees
        ],
        "all_acknowledged_at": rec.all_acknowledged_at,
        "response_time_s": rec.response_time_s,
        "closed_at": rec.closed_at,
        "closed_by": rec.closed_by,
        "close_comment": closing[-1]["reason"] if closing else None,
    }
