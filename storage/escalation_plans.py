"""Escalation plans: per alert, the policy it started under and when to look at it again.

Every timestamp is passed in by the caller, so the escalation clock can be controlled in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coldchain.domain import AlertState, Severity
from coldchain.errors import NotFoundError
from storage.rows import fetch_one


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What escalation and routing need to know about an alert.

    `stopped_at` is when escalation stopped (the alert left `open`: acknowledged, resolved or
    closed), or None while it is open.
    """

    id: int
    org_id: int
    severity: Severity
    state: AlertState
    opened_at: datetime
    stopped_at: datetime | None
    shipment_id: str | None
    origin: str | None
    destination: str | None
    device_id: str | None


def alert_facts(conn: psycopg.Connection, alert_id: int, *, org: int | None = None) -> AlertFacts:
    found = fetch_one(
        conn,
        AlertFacts,
        "SELECT a.id, a.org_id, a.severity, a.state, a.opened_at,"
        " CASE WHEN a.state = 'open' THEN NULL"
        "      ELSE least(a.acknowledged_at, a.resolved_at, a.closed_at, a.withdrawn_at) END AS stopped_at,"
        " s.id AS shipment_id, s.origin, s.destination, d.id AS device_id"
        " FROM alerts a LEFT JOIN shipments s ON s.key = a.shipment_key"
        " LEFT JOIN devices d ON d.key = a.device_key"
        " WHERE a.id = %s AND (%s::smallint IS NULL OR a.org_id = %s::smallint)",
        (alert_id, org, org),
    )
    if found is None:
        raise NotFoundError("alert", str(alert_id))
    return found


@dataclass(frozen=True, slots=True)
class PlanRow:
    """The escalation plan of one alert: the pinned policy and the next time to look again."""

    alert_id: int
    org_id: int
    policy_key: str
    policy: dict[str, Any]
    next_check_at: datetime | None
    stopped_at: datetime | None


def lock_plan(
    conn: psycopg.Connection,
    *,
    alert_id: int,
    org: int,
    policy_key: str,
    policy: dict[str, Any],
    now: datetime,
) -> PlanRow:
    """The alert's plan under a row lock, created with this policy if the alert has none yet.

    Call inside a transaction; the lock keeps two planners from working on one alert at once.
    """
    conn.execute(
        "INSERT INTO notify_alert_plans (alert_id, org_id, policy_key, policy, next_check_at,"
        " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO NOTHING",
        (alert_id, org, policy_key, Jsonb(policy), now, now, now),
    )
    plan = fetch_one(
        conn,
        PlanRow,
        "SELECT alert_id, org_id, policy_key, policy, next_check_at, stopped_at"
        " FROM notify_alert_plans WHERE alert_id = %s FOR UPDATE",
        (alert_id,),
    )
    assert plan is not None
    return plan


def save_plan(
    conn: psycopg.Connection,
    *,
    alert_id: int,
    next_check_at: datetime | None,
    stopped_at: datetime | None,
    now: datetime,
) -> None:
    conn.execute(
        "UPDATE notify_alert_plans SET next_check_at = %s, stopped_at = %s, updated_at = %s"
        " WHERE alert_id = %s",
        (next_check_at, stopped_at, now, alert_id),
    )


def alerts_to_plan(
    conn: psycopg.Connection, *, now: datetime, lookback: timedelta, limit: int = 500
) -> list[int]:
    """Alerts whose plan is due a look, and open alerts (opened within `lookback`) with no plan."""
    rows = conn.execute(
        "(SELECT alert_id FROM notify_alert_plans WHERE next_check_at <= %s ORDER BY next_check_at LIMIT %s)"
        " UNION"
        " (SELECT a.id FROM alerts a WHERE a.state = 'open' AND a.opened_at > %s"
        "  AND NOT EXISTS (SELECT 1 FROM notify_alert_plans p WHERE p.alert_id = a.id) LIMIT %s)",
        (now, limit, now - lookback, limit),
    ).fetchall()
    return sorted(int(r[0]) for r in rows)
