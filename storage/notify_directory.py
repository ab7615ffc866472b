"""Who is told, and by which rules: notification contacts, routing rules and escalation policies.

Every change writes its audit row in the same transaction. Contacts are disabled, never deleted
(outbox rows keep naming them); policies are versioned and a version is never edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import time
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from coldchain.errors import ConflictError, NotFoundError, ValidationError
from storage.audit import record
from storage.rows import fetch_all, fetch_one


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

    def audit_value(self) -> dict[str, Any]:
        """The contact as the audit trail records it: everything but the webhook secret."""
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
    " timezone, quiet_start, quiet_end, quiet_days, may_acknowledge, disabled_at IS NOT NULL AS disabled"
)


def upsert_contact(conn: psycopg.Connection, contact: ContactRow, *, actor: str) -> ContactRow:
    """Create or replace a contact (re-enabling it), with its audit row, in one transaction."""
    with conn.transaction():
        old = fetch_one(
            conn,
            ContactRow,
            f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s AND id = %s FOR UPDATE",
            (contact.org_id, contact.id),
        )
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
            old=old.audit_value() if old else None,
            new=contact.audit_value(),
        )
    return get_contact(conn, org=contact.org_id, contact_id=contact.id)


def get_contact(conn: psycopg.Connection, *, org: int, contact_id: str) -> ContactRow:
    found = fetch_one(
        conn,
        ContactRow,
        f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s AND id = %s",
        (org, contact_id),
    )
    if found is None:
        raise NotFoundError("contact", contact_id)
    return found


def list_contacts(conn: psycopg.Connection, *, org: int, include_disabled: bool = False) -> list[ContactRow]:
    return fetch_all(
        conn,
        ContactRow,
        f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s"
        " AND (%s OR disabled_at IS NULL) ORDER BY id",
        (org, include_disabled),
    )


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
    return fetch_one(
        conn,
        ContactRow,
        f"SELECT {_CONTACT_COLUMNS} FROM notify_contacts WHERE org_id = %s AND phone = %s"
        " AND disabled_at IS NULL ORDER BY id LIMIT 1",
        (org, phone),
    )


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
    return fetch_all(
        conn,
        PolicyRow,
        "SELECT DISTINCT ON (p.id) p.org_id, p.id, p.version, p.body, d.policy_id IS NOT NULL AS is_default"
        " FROM notify_policies p LEFT JOIN notify_default_policy d"
        " ON d.org_id = p.org_id AND d.policy_id = p.id"
        " WHERE p.org_id = %s ORDER BY p.id, p.version DESC",
        (org,),
    )


def default_policy(conn: psycopg.Connection, *, org: int) -> PolicyRow | None:
    """The latest version of the organization's default policy, or None."""
    return fetch_one(
        conn,
        PolicyRow,
        "SELECT p.org_id, p.id, p.version, p.body, true AS is_default FROM notify_default_policy d"
        " JOIN notify_policies p ON p.org_id = d.org_id AND p.id = d.policy_id"
        " WHERE d.org_id = %s ORDER BY p.version DESC LIMIT 1",
        (org,),
    )
