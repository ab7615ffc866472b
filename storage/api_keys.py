"""Machines' API keys: a name, a role, an expiry and the last use; the bootstrap key rotates with
COLDCHAIN_BOOTSTRAP_TOKEN. Keys are the `api_tokens` of storage/auth.py (digest only, shown once)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from coldchain.access import Role
from coldchain.errors import NotFoundError, ValidationError
from storage.audit import record
from storage.auth import new_token, token_digest

BOOTSTRAP_NAME = "bootstrap-admin"


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    id: int
    name: str
    role: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    bootstrap: bool

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "bootstrap": self.bootstrap,
        }


_COLUMNS = "id, name, role, created_at, created_by, expires_at, last_used_at, revoked_at, bootstrap"


def create_key(
    conn: psycopg.Connection,
    *,
    org: int,
    name: str,
    role: Role,
    expires_in_days: int | None,
    actor: str,
) -> tuple[ApiKeyRow, str]:
    """A new key (the row and the key itself, which is never stored and shown only now)."""
    if not name.strip() or len(name) > 100:
        raise ValidationError("a key needs a name of 1 to 100 characters", field="name")
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise ValidationError("expires_in_days must be between 1 and 3650", field="expires_in_days")
    value = new_token()
    with conn.transaction():
        with conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
            row = cur.execute(
                "INSERT INTO api_tokens (org_id, name, role, token_hash, created_by, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, now() + make_interval(days => %s))"
                f" RETURNING {_COLUMNS}",
                (org, name.strip(), role.value, token_digest(value), actor, expires_in_days),
            ).fetchone()
        assert row is not None
        record(
            conn,
            org_id=org,
            actor=actor,
            action="create",
            entity="api_key",
            key=str(row.id),
            new={
                "name": row.name,
                "role": row.role,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            },
        )
    return row, value


def list_keys(conn: psycopg.Connection, *, org: int, include_revoked: bool = False) -> list[ApiKeyRow]:
    with conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE org_id = %s AND (%s OR revoked_at IS NULL) ORDER BY id",
            (org, include_revoked),
        ).fetchall()


def revoke_key(
    conn: psycopg.Connection, *, org: int, key_id: int, actor: str, reason: str | None = None
) -> ApiKeyRow:
    with conn.transaction():
        with conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
            row = cur.execute(
                "UPDATE api_tokens SET revoked_at = now()"
                " WHERE org_id = %s AND id = %s AND revoked_at IS NULL"
                f" RETURNING {_COLUMNS}",
                (org, key_id),
            ).fetchone()
        if row is None:
            raise NotFoundError("api key", str(key_id))
        record(
            conn,
            org_id=org,
            actor=actor,
            action="revoke",
            entity="api_key",
            key=str(key_id),
            old={"name": row.name, "role": row.role},
            reason=reason,
        )
    return row


def ensure_bootstrap(conn: psycopg.Connection, *, org: int, token: str) -> bool:
    """Make `token` the organization's bootstrap admin key. A different earlier bootstrap key is
    revoked (the variable changed: rotation). True when the key was added now."""
    with conn.transaction():
        known = conn.execute(
            "SELECT revoked_at IS NULL FROM api_tokens WHERE token_hash = %s", (token_digest(token),)
        ).fetchone()
        if known is not None:
            return False
        old = conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE org_id = %s AND bootstrap AND revoked_at IS NULL"
            " RETURNING id",
            (org,),
        ).fetchall()
        row = conn.execute(
            "INSERT INTO api_tokens (org_id, name, role, token_hash, created_by, bootstrap)"
            " VALUES (%s, %s, 'admin', %s, 'system', true) RETURNING id",
            (org, BOOTSTRAP_NAME, token_digest(token)),
        ).fetchone()
        assert row is not None
        record(
            conn,
            org_id=org,
            actor="system",
            action="rotate" if old else "create",
            entity="api_key",
            key=str(row[0]),
            old={"revoked": [int(r[0]) for r in old]} if old else None,
            new={"name": BOOTSTRAP_NAME, "role": "admin"},
            reason="COLDCHAIN_BOOTSTRAP_TOKEN changed" if old else "first start",
        )
    return True
