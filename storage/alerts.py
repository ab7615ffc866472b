"""Alerts: one row per episode, every transition recorded with who, when and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coldchain.alert_lifecycle import next_state
from coldchain.domain import Alert, AlertState, Disposition, Severity
from coldchain.errors import NotFoundError, ValidationError
from storage import profiles
from storage.audit import record
from storage.listen import Wakeup, wake
from storage.rows import fetch_all, fetch_one

_ALERT_COLUMNS = (
    "a.id, o.slug AS organization, a.kind, a.severity, a.state, d.id AS device_id, s.id AS shipment_id,"
    " a.limit_id, a.message, a.opened_at, a.started_at, a.ended_at, a.peak_c, a.acknowledged_at,"
    " a.acknowledged_by, a.resolved_at, a.closed_at, a.disposition, a.assignee, a.profile_id,"
    " a.profile_version,"
    " coalesce((SELECT array_agg(ARRAY[sl.gtin, sl.lot] ORDER BY sl.gtin, sl.lot)"
    "           FROM shipment_lots sl WHERE sl.shipment_key = a.shipment_key), '{}') AS lots"
)
_ALERT_FROM = (
    " FROM alerts a JOIN organizations o ON o.id = a.org_id"
    " LEFT JOIN devices d ON d.key = a.device_key LEFT JOIN shipments s ON s.key = a.shipment_key"
)


@dataclass(frozen=True, slots=True)
class NewAlert:
    """What the rules engine knows when it raises an alert; `episode_key` makes it idempotent."""

    org_id: int
    episode_key: str
    kind: str
    severity: Severity
    message: str
    device_key: int | None = None
    shipment_key: int | None = None
    limit_id: str | None = None
    profile_id: str | None = None
    profile_version: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    peak_c: float | None = None


def raise_alert(conn: psycopg.Connection, alert: NewAlert, *, actor: str = "rules") -> tuple[int, bool]:
    """Open the alert of an episode unless it exists; (id, True when opened now). The profile's
    body is frozen with the alert."""
    row = conn.execute(
        "INSERT INTO alerts (org_id, episode_key, kind, severity, state, device_key, shipment_key,"
        " limit_id, profile_id, profile_version, message, started_at, ended_at, peak_c, profile_body)"
        " VALUES (%s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (org_id, episode_key) DO NOTHING RETURNING id",
        (
            alert.org_id,
            alert.episode_key,
            alert.kind,
            alert.severity.value,
            alert.device_key,
            alert.shipment_key,
            alert.limit_id,
            alert.profile_id,
            alert.profile_version,
            alert.message,
            alert.started_at,
            alert.ended_at,
            alert.peak_c,
            _profile_body(conn, alert),
        ),
    ).fetchone()
    if row is None:
        existing = conn.execute(
            "SELECT id FROM alerts WHERE org_id = %s AND episode_key = %s",
            (alert.org_id, alert.episode_key),
        ).fetchone()
        assert existing is not None
        return int(existing[0]), False
    alert_id = int(row[0])
    conn.execute(
        "INSERT INTO alert_events (alert_id, actor, action, to_state, comment)"
        " VALUES (%s, %s, 'open', 'open', %s)",
        (alert_id, actor, alert.message),
    )
    record(
        conn,
        org_id=alert.org_id,
        actor=actor,
        action="open",
        entity="alert",
        key=str(alert_id),
        new={
            "kind": alert.kind,
            "severity": alert.severity.value,
            "limit": alert.limit_id,
            "profile": alert.profile_id,
            "profile_version": alert.profile_version,
        },
    )
    wake(conn, Wakeup.ALERTS, str(alert_id))
    return alert_id, True


def _profile_body(conn: psycopg.Connection, alert: NewAlert) -> Jsonb | None:
    if alert.profile_id is None or alert.profile_version is None:
        return None
    try:
        profile = profiles.resolve_version(
            conn, org=alert.org_id, profile_id=alert.profile_id, version=alert.profile_version
        )
    except NotFoundError:
        return None
    return Jsonb(profile.to_dict())


def profile_body(conn: psycopg.Connection, *, org: int, alert_id: int) -> dict[str, Any] | None:
    """The profile body frozen with the alert when it opened (None for alerts without a profile)."""
    row = conn.execute(
        "SELECT profile_body FROM alerts WHERE org_id = %s AND id = %s", (org, alert_id)
    ).fetchone()
    return None if row is None or row[0] is None else dict(row[0])


def update_episode(
    conn: psycopg.Connection, alert_id: int, *, ended_at: datetime | None, peak_c: float | None
) -> AlertState | None:
    """Keep the episode's end and peak current while it runs (not a lifecycle transition);
    returns the alert's state, so that a withdrawn one the readings show again is reinstated."""
    row = conn.execute(
        "UPDATE alerts SET ended_at = %s, peak_c = CASE WHEN %s::real IS NULL THEN peak_c"
        " ELSE %s::real END WHERE id = %s RETURNING state",
        (ended_at, peak_c, peak_c, alert_id),
    ).fetchone()
    return None if row is None else AlertState(row[0])


def get_alert(conn: psycopg.Connection, *, org: int, alert_id: int) -> Alert:
    found = fetch_one(
        conn,
        Alert,
        f"SELECT {_ALERT_COLUMNS}{_ALERT_FROM} WHERE a.org_id = %s AND a.id = %s",
        (org, alert_id),
    )
    if found is None:
        raise NotFoundError("alert", str(alert_id))
    return found


def list_alerts(
    conn: psycopg.Connection,
    *,
    org: int,
    states: list[AlertState] | None = None,
    shipment_keys: list[int] | None = None,
    limit: int = 500,
) -> list[Alert]:
    where = ["a.org_id = %(org)s"]
    params: dict[str, Any] = {"org": org, "limit": limit}
    if states:
        where.append("a.state = ANY(%(states)s)")
        params["states"] = [s.value for s in states]
    if shipment_keys is not None:
        where.append("a.shipment_key = ANY(%(keys)s)")
        params["keys"] = shipment_keys
    return fetch_all(
        conn,
        Alert,
        f"SELECT {_ALERT_COLUMNS}{_ALERT_FROM} WHERE {' AND '.join(where)}"  # where: fixed clauses
        " ORDER BY a.opened_at DESC, a.id DESC LIMIT %(limit)s",
        params,
    )


def transition(
    conn: psycopg.Connection,
    *,
    org: int,
    alert_id: int,
    action: str,
    actor: str,
    comment: str | None = None,
    disposition: Disposition | None = None,
) -> Alert:
    """Apply a lifecycle action under a row lock, with its event and audit rows, in one transaction."""
    with conn.transaction():
        row = conn.execute(
            "SELECT state FROM alerts WHERE org_id = %s AND id = %s FOR UPDATE", (org, alert_id)
        ).fetchone()
        if row is None:
            raise NotFoundError("alert", str(alert_id))
        current = AlertState(row[0])
        target = next_state(current, action)
        if action == "close" and disposition is None:
            raise ValidationError("closing an alert needs a QA disposition", field="disposition")
        stamp = {
            AlertState.ACKNOWLEDGED: "acknowledged_at = now(), acknowledged_by = %(actor)s,",
            AlertState.RESOLVED: "resolved_at = now(), resolved_by = %(actor)s,",
            AlertState.CLOSED: "closed_at = now(), closed_by = %(actor)s, disposition = %(disp)s,",
            AlertState.OPEN: "resolved_at = NULL, resolved_by = NULL, withdrawn_at = NULL,",
            AlertState.WITHDRAWN: "withdrawn_at = now(),",
        }[target]
        conn.execute(
            f"UPDATE alerts SET {stamp} state = %(state)s WHERE id = %(id)s",
            {
                "actor": actor,
                "disp": disposition.value if disposition else None,
                "state": target.value,
                "id": alert_id,
            },
        )
        conn.execute(
            "INSERT INTO alert_events (alert_id, actor, action, from_state, to_state, comment)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (alert_id, actor, action, current.value, target.value, comment),
        )
        new: dict[str, Any] = {"state": target.value}
        if disposition is not None:
            new["disposition"] = disposition.value
        record(
            conn,
            org_id=org,
            actor=actor,
            action=action,
            entity="alert",
            key=str(alert_id),
            old={"state": current.value},
            new=new,
            reason=comment,
        )
        wake(conn, Wakeup.ALERTS, str(alert_id))
    return get_alert(conn, org=org, alert_id=alert_id)


def note(conn: psycopg.Connection, *, org: int, alert_id: int, actor: str, action: str, comment: str) -> None:
    """Record a fact about an alert that changes no state (its event and audit rows)."""
    conn.execute(
        "INSERT INTO alert_events (alert_id, actor, action, comment) VALUES (%s, %s, %s, %s)",
        (alert_id, actor, action, comment),
    )
    record(conn, org_id=org, actor=actor, action=action, entity="alert", key=str(alert_id), reason=comment)


def assign(conn: psycopg.Connection, *, org: int, alert_id: int, assignee: str | None, actor: str) -> Alert:
    with conn.transaction():
        row = conn.execute(
            "UPDATE alerts SET assignee = %s WHERE org_id = %s AND id = %s RETURNING id",
            (assignee, org, alert_id),
        ).fetchone()
        if row is None:
            raise NotFoundError("alert", str(alert_id))
        conn.execute(
            "INSERT INTO alert_events (alert_id, actor, action, comment) VALUES (%s, %s, 'assign', %s)",
            (alert_id, actor, assignee),
        )
        record(
            conn,
            org_id=org,
            actor=actor,
            action="assign",
            entity="alert",
            key=str(alert_id),
            new={"assignee": assignee},
        )
    return get_alert(conn, org=org, alert_id=alert_id)


def alert_history(conn: psycopg.Connection, *, org: int, alert_id: int) -> list[dict[str, Any]]:
    get_alert(conn, org=org, alert_id=alert_id)  # scope check
    rows = conn.execute(
        "SELECT at, actor, action, from_state, to_state, comment FROM alert_events"
        " WHERE alert_id = %s ORDER BY id",
        (alert_id,),
    ).fetchall()
    return [
        {"at": r[0], "actor": r[1], "action": r[2], "from": r[3], "to": r[4], "comment": r[5]} for r in rows
    ]


def series_alerts(
    conn: psycopg.Connection, *, org_id: int, prefix: str
) -> dict[str, tuple[int, AlertState]]:
    """Every excursion alert of a series (episode keys starting with `prefix`): key -> (id, state)."""
    rows = conn.execute(
        "SELECT episode_key, id, state FROM alerts WHERE org_id = %s AND episode_key LIKE %s",
        (org_id, _like_prefix(prefix)),
    ).fetchall()
    return {r[0]: (int(r[1]), AlertState(r[2])) for r in rows}


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"


def open_episode_alerts(
    conn: psycopg.Connection, *, org_id: int, prefix: str
) -> dict[str, tuple[int, AlertState]]:
    """Alerts of a series not yet resolved: episode key -> (alert id, state)."""
    rows = conn.execute(
        "SELECT episode_key, id, state FROM alerts WHERE org_id = %s AND episode_key LIKE %s"
        " AND state IN ('open', 'acknowledged')",
        (org_id, prefix.replace("%", r"\%") + "%"),
    ).fetchall()
    return {r[0]: (int(r[1]), AlertState(r[2])) for r in rows}


def alert_of_episode(
    conn: psycopg.Connection, *, org_id: int, episode_key: str
) -> tuple[int, AlertState] | None:
    """The alert raised for this episode (id, state), if any."""
    row = conn.execute(
        "SELECT id, state FROM alerts WHERE org_id = %s AND episode_key = %s", (org_id, episode_key)
    ).fetchone()
    return None if row is None else (int(row[0]), AlertState(row[1]))
