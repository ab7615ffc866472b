"""Notification SQL: contacts, routing rules, escalation policies and plans, the outbox, ack nonces.

The outbox is the truth of who was told what and when. Rows are inserted with a deterministic,
unique idempotency key (ON CONFLICT DO NOTHING), claimed with FOR UPDATE SKIP LOCKED, marked
`sending` and committed before the provider is called, and given their receipt afterwards; a row
left `sending` waits until `next_attempt_at` (the grace period) before it may be sent again.
Every timestamp is passed in by the caller, so the escalation clock can be controlled in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from coldchain.errors import ConflictError, NotFoundError, ValidationError
from storage.audit import record

__all__ = [
    "ACTIVE_STATES",
    "AlertFacts",
    "ContactRow",
    "NotificationRow",
    "OutboxItem",
    "PlanRow",
    "PolicyRow",
    "alert_facts",
    "alert_readings",
    "alerts_to_plan",
    "apply_status",
    "cancel_unsent",
    "claim_due",
    "contact_by_phone",
    "default_policy",
    "delete_contact",
    "digest_members",
    "enqueue",
    "expire_unconfirmed",
    "fold_digests",
    "get_contact",
    "list_contacts",
    "list_policies",
    "list_routing_rules",
    "lock_plan",
    "nonce_used",
    "notifications_for_alert",
    "notified_about",
    "outbox_counts",
    "put_policy",
    "put_routing_rules",
    "recent_sends",
    "record_outcome",
    "save_plan",
    "sent_keys",
    "set_default_policy",
    "upsert_contact",
    "use_ack_nonce",
    "wake_workers",
]

ACTIVE_STATES: Final = ("pending", "sending")
UNSENT_STATES: Final = ("pending", "held")
# Rows that count against a recipient's rate limit: everything handed (or about to be handed)
# to a provider.
_COUNTED: Final = ("pending", "sending", "queued", "sent", "delivered", "undelivered")


# -- contacts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactRow:
    """A contact as stored; the rules layer turns it into routing.Contact."""

    org_id: int
    id: str
    name: str
    phone: str | None = None
    email: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    roles: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()
    timezone: str = "UTC"
    quiet_start: time | None = None
    quiet_end: time | None = None
    quiet_days: tuple[int, ...] | None = None
    may_acknowledge: bool = True
    disabled: bool = False

    def __post_init__(self) -> None:
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValidationError("quiet hours need both a start and an end", field="quiet_hours")

    def public(self) -> dict[str, Any]:
        """The contact for the API: everything but the webhook secret."""
        return {
            "id": self.id,
            "name": self.name,
            "phone": self.phone,
            "email": self.email,
            "webhook_url": self.webhook_url,
            "webhook_secret_set": self.webhook_secret is not None,
            "roles": list(self.roles),
            "sites": list(self.sites),
            "routes": list(self.routes),
            "customers": list(self.customers),
            "timezone": self.timezone,
            "quiet_hours": None
            if self.quiet_start is None or self.quiet_end is None
            else {
                "start": self.quiet_start.strftime("%H:%M"),
                "end": self.quiet_end.strftime("%H:%M"),
                "days": list(self.quiet_days) if self.quiet_days is not None else None,
            },
            "may_acknowledge": self.may_acknowledge,
            "disabled": self.disabled,
        }


_CONTACT_COLUMNS: Final = (
    "org_id, id, name, phone, email, webhook_url, webhook_secret, roles, sites, routes, customers,"
    " timezone, quiet_start, quiet_end, quiet_days, may_acknowledge, disabled_at IS NOT NULL"
)


def _contact(row: Sequence[Any]) -> ContactRow:
    return ContactRow(
        org_id=int(row[0]),
        id=row[1],
        name=row[2],
        phone=row[3],
        email=row[4],
        webhook_url=row[5],
        webhook_secret=row[6],
        roles=tuple(row[7]),
        sites=tuple(row[8]),
        routes=tuple(row[9]),
        customers=tuple(row[10]),
        timezone=row[11],
        quiet_start=row[12],
        quiet_end=row[13],
        quiet_days=None if row[14] is None else tuple(int(d) for d in row[14]),
        may_acknowledge=bool(row[15]),
        disabled=bool(row[16]),
    )


def upsert_contact(conn: psycopg.Connection, contact: ContactRow, *, actor: str) -> ContactRow:
    """Create or replace a contact (re-enabling it), with its audit row, in one transaction."""
    with conn.transaction():
        old = conn.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s AND id = %s FOR UPDATE",
            (contact.org_id, contact.id),
        ).fetchone()
        conn.execute(
            "INSERT INTO notify_contacts (org_id, id, name, phone, email, webhook_url, webhook_secret,"
            " roles, sites, routes, customers, timezone, quiet_start, quiet_end, quiet_days,"
            " may_acknowledge) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (org_id, id) DO UPDATE SET name = EXCLUDED.name, phone = EXCLUDED.phone,"
            " email = EXCLUDED.email, webhook_url = EXCLUDED.webhook_url,"
            " webhook_secret = EXCLUDED.webhook_secret, roles = EXCLUDED.roles,"
            " sites = EXCLUDED.sites, routes = EXCLUDED.routes, customers = EXCLUDED.customers,"
            " timezone = EXCLUDED.timezone, quiet_start = EXCLUDED.quiet_start,"
            " quiet_end = EXCLUDED.quiet_end, quiet_days = EXCLUDED.quiet_days,"
            " may_acknowledge = EXCLUDED.may_acknowledge, disabled_at = NULL, updated_at = now()",
            (
                contact.org_id,
                contact.id,
                contact.name,
                contact.phone,
                contact.email,
                contact.webhook_url,
                contact.webhook_secret,
                list(contact.roles),
                list(contact.sites),
                list(contact.routes),
                list(contact.customers),
                contact.timezone,
                contact.quiet_start,
                contact.quiet_end,
                None if contact.quiet_days is None else list(contact.quiet_days),
                contact.may_acknowledge,
            ),
        )
        record(
            conn,
            org_id=contact.org_id,
            actor=actor,
            action="update" if old else "create",
            entity="contact",
            key=contact.id,
            old=_contact(old).public() if old else None,
            new=contact.public(),
        )
    return get_contact(conn, org=contact.org_id, contact_id=contact.id)


def get_contact(conn: psycopg.Connection, *, org: int, contact_id: str) -> ContactRow:
    row = conn.execute(
        f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s AND id = %s",
        (org, contact_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("contact", contact_id)
    return _contact(row)


def list_contacts(conn: psycopg.Connection, *, org: int, include_disabled: bool = False) -> list[ContactRow]:
    rows = conn.execute(
        f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s"
        " AND (%s OR disabled_at IS NULL) ORDER BY id",
        (org, include_disabled),
    ).fetchall()
    return [_contact(r) for r in rows]


def delete_contact(conn: psycopg.Connection, *, org: int, contact_id: str, actor: str) -> None:
    """Disable a contact (rows in the outbox keep naming it, so it is never removed)."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE notify_contacts SET disabled_at = now(), updated_at = now()"
            " WHERE org_id = %s AND id = %s AND disabled_at IS NULL RETURNING id",
            (org, contact_id),
        ).fetchone()
        if row is None:
            raise NotFoundError("contact", contact_id)
        record(conn, org_id=org, actor=actor, action="disable", entity="contact", key=contact_id)


def contact_by_phone(conn: psycopg.Connection, *, org: int, phone: str) -> ContactRow | None:
    """The enabled contact of `org` with this number (an inbound SMS reply's sender), if any."""
    row = conn.execute(
        f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s AND phone = %s"
        " AND disabled_at IS NULL ORDER BY id LIMIT 1",
        (org, phone),
    ).fetchone()
    return None if row is None else _contact(row)


# -- routing rules and policies ---------------------------------------------------------------


def put_routing_rules(
    conn: psycopg.Connection, *, org: int, rules: Sequence[tuple[str, dict[str, Any]]], actor: str
) -> None:
    """Replace the organization's ordered routing rules: (name, body) pairs."""
    with conn.transaction():
        old = list_routing_rules(conn, org=org)
        conn.execute("DELETE FROM notify_routing_rules WHERE org_id = %s", (org,))
        for position, (name, body) in enumerate(rules):
            try:
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO notify_routing_rules (org_id, position, name, body)"
                        " VALUES (%s, %s, %s, %s)",
                        (org, position, name, Jsonb(body)),
                    )
            except pg_errors.UniqueViolation:
                raise ConflictError(f"two routing rules are named {name!r}") from None
        record(
            conn,
            org_id=org,
            actor=actor,
            action="replace",
            entity="routing_rules",
            key=str(org),
            old=[{"name": n, **b} for n, b in old],
            new=[{"name": n, **b} for n, b in rules],
        )


def list_routing_rules(conn: psycopg.Connection, *, org: int) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT name, body FROM notify_routing_rules WHERE org_id = %s ORDER BY position", (org,)
    ).fetchall()
    return [(r[0], dict(r[1])) for r in rows]


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One version of an escalation policy; `key` (`id@version`) goes into idempotency keys."""

    org_id: int
    id: str
    version: int
    body: dict[str, Any]
    is_default: bool = False

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"


def put_policy(
    conn: psycopg.Connection, *, org: int, policy_id: str, body: dict[str, Any], actor: str, default: bool
) -> PolicyRow:
    """Store a new version of the policy (versions are never edited); optionally make it the default."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('notify_policy'), %s)", (org,))
        row = conn.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM notify_policies WHERE org_id = %s AND id = %s",
            (org, policy_id),
        ).fetchone()
        assert row is not None
        version = int(row[0])
        conn.execute(
            "INSERT INTO notify_policies (org_id, id, version, body, created_by) VALUES (%s, %s, %s, %s, %s)",
            (org, policy_id, version, Jsonb(body), actor),
        )
        if default:
            set_default_policy(conn, org=org, policy_id=policy_id, actor=actor)
        record(
            conn,
            org_id=org,
            actor=actor,
            action="create",
            entity="escalation_policy",
            key=f"{policy_id}@{version}",
            new=body,
        )
    return PolicyRow(org, policy_id, version, body, default)


def set_default_policy(conn: psycopg.Connection, *, org: int, policy_id: str, actor: str) -> None:
    with conn.transaction():
        exists = conn.execute(
            "SELECT 1 FROM notify_policies WHERE org_id = %s AND id = %s LIMIT 1", (org, policy_id)
        ).fetchone()
        if exists is None:
            raise NotFoundError("escalation policy", policy_id)
        conn.execute(
            "INSERT INTO notify_default_policy (org_id, policy_id) VALUES (%s, %s)"
            " ON CONFLICT (org_id) DO UPDATE SET policy_id = EXCLUDED.policy_id",
            (org, policy_id),
        )
        record(conn, org_id=org, actor=actor, action="set_default", entity="escalation_policy", key=policy_id)


def list_policies(conn: psycopg.Connection, *, org: int) -> list[PolicyRow]:
    """The latest version of every policy of the organization."""
    rows = conn.execute(
        "SELECT DISTINCT ON (p.id) p.org_id, p.id, p.version, p.body, d.policy_id IS NOT NULL"
        " FROM notify_policies p LEFT JOIN notify_default_policy d"
        " ON d.org_id = p.org_id AND d.policy_id = p.id"
        " WHERE p.org_id = %s ORDER BY p.id, p.version DESC",
        (org,),
    ).fetchall()
    return [PolicyRow(int(r[0]), r[1], int(r[2]), dict(r[3]), bool(r[4])) for r in rows]


def default_policy(conn: psycopg.Connection, *, org: int) -> PolicyRow | None:
    """The latest version of the organization's default policy, or None."""
    row = conn.execute(
        "SELECT p.org_id, p.id, p.version, p.body FROM notify_default_policy d"
        " JOIN notify_policies p ON p.org_id = d.org_id AND p.id = d.policy_id"
        " WHERE d.org_id = %s ORDER BY p.version DESC LIMIT 1",
        (org,),
    ).fetchone()
    return None if row is None else PolicyRow(int(row[0]), row[1], int(row[2]), dict(row[3]), True)


# -- escalation plans -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What escalation and routing need to know about an alert.

    `stopped_at` is when escalation stopped (the alert left `open`: acknowledged, resolved or
    closed), or None while it is open.
    """

    id: int
    org_id: int
    severity: str
    state: str
    opened_at: datetime
    stopped_at: datetime | None
    shipment_id: str | None
    origin: str | None
    destination: str | None
    device_id: str | None


def alert_facts(conn: psycopg.Connection, alert_id: int, *, org: int | None = None) -> AlertFacts:
    row = conn.execute(
        "SELECT a.id, a.org_id, a.severity, a.state, a.opened_at,"
        " CASE WHEN a.state = 'open' THEN NULL"
        "      ELSE least(a.acknowledged_at, a.resolved_at, a.closed_at) END,"
        " s.id, s.origin, s.destination, d.id"
        " FROM alerts a LEFT JOIN shipments s ON s.key = a.shipment_key"
        " LEFT JOIN devices d ON d.key = a.device_key"
        " WHERE a.id = %s AND (%s::smallint IS NULL OR a.org_id = %s::smallint)",
        (alert_id, org, org),
    ).fetchone()
    if row is None:
        raise NotFoundError("alert", str(alert_id))
    return AlertFacts(
        id=int(row[0]),
        org_id=int(row[1]),
        severity=row[2],
        state=row[3],
        opened_at=row[4],
        stopped_at=row[5],
        shipment_id=row[6],
        origin=row[7],
        destination=row[8],
        device_id=row[9],
    )


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
    row = conn.execute(
        "SELECT alert_id, org_id, policy_key, policy, next_check_at, stopped_at"
        " FROM notify_alert_plans WHERE alert_id = %s FOR UPDATE",
        (alert_id,),
    ).fetchone()
    assert row is not None
    return PlanRow(int(row[0]), int(row[1]), row[2], dict(row[3]), row[4], row[5])


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


# -- the outbox -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A notification to insert; `state` is pending, held (digest) or suppressed."""

    org_id: int
    idempotency_key: str
    alert_id: int | None
    channel: str
    recipient: str
    state: str
    due_at: datetime
    next_attempt_at: datetime
    kind: str = "escalation"
    tier: int | None = None
    repeat_index: int | None = None
    contact_id: str | None = None
    severity: str | None = None
    gate_reason: str | None = None

    def __post_init__(self) -> None:
        if self.state not in ("pending", "held", "suppressed"):
            raise ValidationError(f"a new notification cannot be {self.state!r}", field="state")
        if not self.idempotency_key:
            raise ValidationError("a notification needs an idempotency key", field="idempotency_key")


def sent_keys(conn: psycopg.Connection, alert_id: int) -> set[tuple[int, int, str, str]]:
    """(tier, repeat, contact, channel) of every escalation row of the alert, whatever its state."""
    rows = conn.execute(
        "SELECT tier, repeat_index, contact_id, channel FROM notify_outbox"
        " WHERE alert_id = %s AND kind = 'escalation'",
        (alert_id,),
    ).fetchall()
    return {(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows}


def enqueue(conn: psycopg.Connection, items: Iterable[OutboxItem], *, now: datetime) -> int:
    """Insert the notifications not already there (by idempotency key); how many were new."""
    inserted = 0
    for item in items:
        row = conn.execute(
            "INSERT INTO notify_outbox (org_id, idempotency_key, kind, alert_id, tier, repeat_index,"
            " contact_id, channel, recipient, severity, state, gate_reason, due_at, next_attempt_at,"
            " created_at, updated_at, final_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s = 'suppressed' THEN %s::timestamptz END)"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (
                item.org_id,
                item.idempotency_key,
                item.kind,
                item.alert_id,
                item.tier,
                item.repeat_index,
                item.contact_id,
                item.channel,
                item.recipient,
                item.severity,
                item.state,
                item.gate_reason,
                item.due_at,
                item.next_attempt_at,
                now,
                now,
                item.state,
                now,
            ),
        ).fetchone()
        inserted += row is not None
    return inserted


def recent_sends(
    conn: psycopg.Connection, *, org: int, contact_id: str, channel: str, since: datetime
) -> list[tuple[datetime, int, str]]:
    """(created_at, alert id, severity) of what went (or is going) to the recipient since `since`."""
    rows = conn.execute(
        "SELECT created_at, coalesce(alert_id, 0), coalesce(severity, 'warning') FROM notify_outbox"
        " WHERE org_id = %s AND contact_id = %s AND channel = %s AND created_at > %s"
        " AND state = ANY(%s) ORDER BY created_at",
        (org, contact_id, channel, since, list(_COUNTED)),
    ).fetchall()
    return [(r[0], int(r[1]), r[2]) for r in rows]


def cancel_unsent(conn: psycopg.Connection, *, now: datetime, alert_id: int | None = None) -> int:
    """Cancel escalation rows not yet sent for alerts that left `open` (all, or one alert).

    A `sending` row is cancelled too: it may have gone out, but it will not be sent again.
    """
    rows = conn.execute(
        "UPDATE notify_outbox o SET state = 'cancelled', final_at = %s, updated_at = %s,"
        " last_error = CASE WHEN o.state = 'sending' THEN coalesce(o.last_error || '; ', '')"
        "   || 'unconfirmed when the alert stopped escalating' ELSE o.last_error END,"
        " gate_reason = coalesce(o.gate_reason || '; ', '') || 'alert ' || a.state"
        " FROM alerts a WHERE a.id = o.alert_id AND a.state <> 'open' AND o.kind = 'escalation'"
        " AND o.state IN ('pending', 'held', 'sending') AND (%s::bigint IS NULL OR o.alert_id = %s::bigint)"
        " RETURNING o.id",
        (now, now, alert_id, alert_id),
    ).fetchall()
    return len(rows)


def expire_unconfirmed(conn: psycopg.Connection, *, now: datetime, max_attempts: int) -> int:
    """Mark failed the `sending` rows whose grace ran out with no attempt left."""
    rows = conn.execute(
        "UPDATE notify_outbox SET state = 'failed', final_at = %s, updated_at = %s,"
        " last_error = coalesce(last_error || '; ', '')"
        "   || 'no confirmation after ' || attempts || ' attempts'"
        " WHERE state = 'sending' AND next_attempt_at <= %s AND attempts >= %s RETURNING id",
        (now, now, now, max_attempts),
    ).fetchall()
    return len(rows)


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """One outbox row as the worker and the API see it."""

    id: int
    org_id: int
    idempotency_key: str
    kind: str
    alert_id: int | None
    tier: int | None
    repeat_index: int | None
    contact_id: str | None
    channel: str
    recipient: str
    severity: str | None
    state: str
    gate_reason: str | None
    attempts: int
    due_at: datetime
    next_attempt_at: datetime
    provider_id: str | None
    provider_status: str | None
    last_error: str | None
    digest_id: int | None
    created_at: datetime
    sent_at: datetime | None
    final_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "kind": self.kind,
            "alert_id": self.alert_id,
            "tier": self.tier,
            "repeat": self.repeat_index,
            "contact_id": self.contact_id,
            "channel": self.channel,
            "state": self.state,
            "reason": self.gate_reason,
            "attempts": self.attempts,
            "due_at": self.due_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "provider_id": self.provider_id,
            "provider_status": self.provider_status,
            "last_error": self.last_error,
            "digest_id": self.digest_id,
            "created_at": self.created_at.isoformat(),
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "final_at": self.final_at.isoformat() if self.final_at else None,
            "failed": self.state in ("failed", "undelivered"),
        }


_ROW_COLUMNS: Final = (
    "id, org_id, idempotency_key, kind, alert_id, tier, repeat_index, contact_id, channel, recipient,"
    " severity, state, gate_reason, attempts, due_at, next_attempt_at, provider_id, provider_status,"
    " last_error, digest_id, created_at, sent_at, final_at"
)


def _row(r: Sequence[Any]) -> NotificationRow:
    return NotificationRow(
        id=int(r[0]),
        org_id=int(r[1]),
        idempotency_key=r[2],
        kind=r[3],
        alert_id=None if r[4] is None else int(r[4]),
        tier=r[5],
        repeat_index=r[6],
        contact_id=r[7],
        channel=r[8],
        recipient=r[9],
        severity=r[10],
        state=r[11],
        gate_reason=r[12],
        attempts=int(r[13]),
        due_at=r[14],
        next_attempt_at=r[15],
        provider_id=r[16],
        provider_status=r[17],
        last_error=r[18],
        digest_id=None if r[19] is None else int(r[19]),
        created_at=r[20],
        sent_at=r[21],
        final_at=r[22],
    )


def claim_due(
    conn: psycopg.Connection, *, now: datetime, limit: int, grace: timedelta
) -> list[NotificationRow]:
    """Take due rows (pending, or sending past their grace) and mark them `sending`.

    The caller commits right after, before calling any provider: from then on a crash leaves the
    row `sending`, and it is not sent again until `grace` has passed with no status callback.
    """
    rows = conn.execute(
        f"UPDATE notify_outbox o SET state = 'sending', attempts = o.attempts + 1, sending_since = %s,"
        f" next_attempt_at = %s, updated_at = %s"
        f" FROM (SELECT id FROM notify_outbox WHERE state IN ('pending', 'sending')"
        f"       AND next_attempt_at <= %s ORDER BY next_attempt_at, id LIMIT %s"
        f"       FOR UPDATE SKIP LOCKED) due"
        f" WHERE o.id = due.id RETURNING {', '.join('o.' + c.strip() for c in _ROW_COLUMNS.split(','))}",
        (now, now + grace, now, now, limit),
    ).fetchall()
    return sorted((_row(r) for r in rows), key=lambda n: (n.next_attempt_at, n.id))


def record_outcome(
    conn: psycopg.Connection,
    *,
    row_id: int,
    state: str,
    now: datetime,
    provider_id: str | None = None,
    provider_status: str | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Store what the send produced, unless a status callback already moved the row on.

    `state` is the provider's state (queued, sent, delivered...), `failed`, `pending` (retry at
    `next_attempt_at`) or `sending` (ambiguous: wait for a callback until `next_attempt_at`).
    """
    final = state in ("delivered", "undelivered", "failed")
    row = conn.execute(
        "UPDATE notify_outbox SET state = %s, provider_id = coalesce(%s, provider_id),"
        " provider_status = coalesce(%s, provider_status), last_error = coalesce(%s, last_error),"
        " next_attempt_at = coalesce(%s, next_attempt_at), updated_at = %s,"
        " sent_at = CASE WHEN %s IN ('queued', 'sent', 'delivered') THEN coalesce(sent_at, %s::timestamptz)"
        "   ELSE sent_at END,"
        " final_at = CASE WHEN %s THEN %s::timestamptz ELSE final_at END"
        " WHERE id = %s AND state = 'sending' RETURNING id",
        (
            state,
            provider_id,
            provider_status,
            error,
            next_attempt_at,
            now,
            state,
            now,
            final,
            now,
            row_id,
        ),
    ).fetchone()
    return row is not None


_RANK: Final = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


def apply_status(
    conn: psycopg.Connection,
    *,
    idempotency_key: str | None,
    provider_id: str,
    state: str,
    provider_status: str,
    error_code: str | None,
    now: datetime,
) -> NotificationRow | None:
    """Merge a provider's status callback into its row; returns the row, or None if unknown.

    A `sending` row (crash or ambiguous failure) takes the reported state, which settles it: it
    will not be sent again. Otherwise the state only moves forward, and final states stick.
    """
    with conn.transaction():
        found = conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE"
            " (%s::text IS NOT NULL AND idempotency_key = %s::text)"
            " OR (%s::text IS NULL AND provider_id = %s) FOR UPDATE",
            (idempotency_key, idempotency_key, idempotency_key, provider_id),
        ).fetchone()
        if found is None:
            return None
        current = _row(found)
        unconfirmed = current.state in ("sending", "pending")
        forward = current.state in _RANK and _RANK[current.state] < 2 and _RANK[state] >= _RANK[current.state]
        target = state if unconfirmed or forward else current.state
        final = target in ("delivered", "undelivered", "failed")
        error = f"provider error {error_code}" if error_code else None
        conn.execute(
            "UPDATE notify_outbox SET state = %s, provider_id = coalesce(provider_id, %s),"
            " provider_status = %s, last_error = coalesce(%s, last_error), updated_at = %s,"
            " sent_at = CASE WHEN %s IN ('queued', 'sent', 'delivered')"
            "   THEN coalesce(sent_at, %s::timestamptz) ELSE sent_at END,"
            " final_at = CASE WHEN %s AND final_at IS NULL THEN %s::timestamptz ELSE final_at END"
            " WHERE id = %s",
            (target, provider_id, provider_status, error, now, target, now, final, now, current.id),
        )
    return _get_row(conn, current.id)


def _get_row(conn: psycopg.Connection, row_id: int) -> NotificationRow:
    row = conn.execute(f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE id = %s", (row_id,)).fetchone()
    if row is None:
        raise NotFoundError("notification", str(row_id))
    return _row(row)


def notifications_for_alert(conn: psycopg.Connection, *, org: int, alert_id: int) -> list[NotificationRow]:
    """Every notification about the alert, oldest first (digests it was folded into included)."""
    rows = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE org_id = %s AND (alert_id = %s OR id IN"
        " (SELECT digest_id FROM notify_outbox WHERE alert_id = %s AND digest_id IS NOT NULL))"
        " ORDER BY id",
        (org, alert_id, alert_id),
    ).fetchall()
    return [_row(r) for r in rows]


def notified_about(conn: psycopg.Connection, *, org: int, alert_id: int, contact_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM notify_outbox WHERE org_id = %s AND alert_id = %s AND contact_id = %s LIMIT 1",
        (org, alert_id, contact_id),
    ).fetchone()
    return row is not None


def digest_members(conn: psycopg.Connection, digest_id: int) -> list[NotificationRow]:
    rows = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE digest_id = %s ORDER BY id", (digest_id,)
    ).fetchall()
    return [_row(r) for r in rows]


def fold_digests(conn: psycopg.Connection, *, now: datetime) -> int:
    """Fold held rows whose time has come into one digest row per recipient and channel.

    Runs in one transaction, so a crash leaves either the held rows or the digest, never both.
    Held rows of alerts no longer open are cancelled instead.
    """
    made = 0
    with conn.transaction():
        cancel_unsent(conn, now=now)
        groups = conn.execute(
            "SELECT org_id, contact_id, channel, recipient, array_agg(id ORDER BY id),"
            " max(CASE severity WHEN 'critical' THEN 3 WHEN 'alarm' THEN 2 ELSE 1 END)"
            " FROM (SELECT * FROM notify_outbox WHERE state = 'held' AND next_attempt_at <= %s"
            "       FOR UPDATE SKIP LOCKED) h GROUP BY org_id, contact_id, channel, recipient",
            (now,),
        ).fetchall()
        for org_id, contact_id, channel, recipient, ids, rank in groups:
            severity = {3: "critical", 2: "alarm", 1: "warning"}[int(rank)]
            key = f"digest:{org_id}:{contact_id}:{channel}:{ids[0]}"
            row = conn.execute(
                "INSERT INTO notify_outbox (org_id, idempotency_key, kind, contact_id, channel, recipient,"
                " severity, state, gate_reason, due_at, next_attempt_at, created_at, updated_at)"
                " VALUES (%s, %s, 'digest', %s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (org_id, key, contact_id, channel, recipient, severity, f"digest of {len(ids)}")
                + (now,) * 4,
            ).fetchone()
            if row is None:
                continue
            conn.execute(
                "UPDATE notify_outbox SET state = 'digested', digest_id = %s, updated_at = %s,"
                " final_at = %s WHERE id = ANY(%s)",
                (int(row[0]), now, now, list(ids)),
            )
            made += 1
    return made


# -- acknowledge links ------------------------------------------------------------------------


def use_ack_nonce(
    conn: psycopg.Connection, *, nonce: str, alert_id: int, contact_id: str, expires_at: datetime
) -> None:
    """Record an acknowledge link's nonce as used; ConflictError if it was used before.

    Call in the acknowledgement's transaction so the two commit (or roll back) together.
    """
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO notify_ack_nonces (nonce, alert_id, contact_id, expires_at)"
                " VALUES (%s, %s, %s, %s)",
                (nonce, alert_id, contact_id, expires_at),
            )
    except pg_errors.UniqueViolation:
        raise ConflictError("this acknowledge link was already used") from None


def nonce_used(conn: psycopg.Connection, nonce: str) -> bool:
    return conn.execute("SELECT 1 FROM notify_ack_nonces WHERE nonce = %s", (nonce,)).fetchone() is not None


def outbox_counts(conn: psycopg.Connection, *, org: int | None = None) -> dict[str, int]:
    """How many rows are in each state (for tests, the benchmark and health checks)."""
    rows = conn.execute(
        "SELECT state, count(*) FROM notify_outbox WHERE %s::smallint IS NULL OR org_id = %s::smallint"
        " GROUP BY state",
        (org, org),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def wake_workers(conn: psycopg.Connection) -> None:
    """Tell outbox workers (in any process) that rows are due; delivered when the caller commits."""
    conn.execute("SELECT pg_notify('notify_outbox', '')")


def alert_readings(
    conn: psycopg.Connection, *, alert_id: int, margin: timedelta = timedelta(minutes=30), limit: int = 5000
) -> tuple[list[float], list[float]]:
    """(epoch seconds, °C) of the alert's logger around its excursion, for the e-mail chart."""
    rows = conn.execute(
        "SELECT extract(epoch FROM r.t)::float8, r.c FROM alerts a JOIN readings r"
        " ON r.device_key = a.device_key AND r.org_id = a.org_id"
        " AND r.t >= coalesce(a.started_at, a.opened_at) - %s"
        " AND r.t <= coalesce(a.ended_at, a.opened_at) + %s"
        " WHERE a.id = %s ORDER BY r.t LIMIT %s",
        (margin, margin, alert_id, limit),
    ).fetchall()
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]
