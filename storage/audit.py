"""The audit trail: append a hash-chained row in the caller's transaction; verify the chain."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def record(
    conn: psycopg.Connection,
    *,
    org_id: int,
    actor: str,
    action: str,
    entity: str,
    key: str,
    old: Any = None,
    new: Any = None,
    reason: str | None = None,
) -> int:
    """Append one audit row inside the caller's transaction (so it commits with the change)."""
    row = conn.execute(
        "SELECT audit_append(%s::smallint, %s, %s, %s, %s, %s, %s, %s)",
        (
            org_id,
            actor,
            action,
            entity,
            key,
            Jsonb(old) if old is not None else None,
            Jsonb(new) if new is not None else None,
            reason,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def verify_chain(conn: psycopg.Connection, org_id: int) -> tuple[bool, int | None]:
    """Recompute every hash of the organization's trail; (ok, id of the first broken row)."""
    rows = conn.execute(
        "SELECT id, prev_hash, hash, encode(sha256(prev_hash || convert_to(concat_ws(E'\\x1f',"
        " org_id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), actor,"
        " action, entity, entity_key, coalesce(old_value::text, ''), coalesce(new_value::text, ''),"
        " coalesce(reason, '')), 'UTF8')), 'hex') FROM audit_trail WHERE org_id = %s ORDER BY id",
        (org_id,),
    ).fetchall()
    prev = b""
    for row_id, prev_hash, stored, recomputed in rows:
        if bytes(prev_hash) != prev or bytes(stored).hex() != recomputed:
            return False, int(row_id)
        prev = bytes(stored)
    return True, None


def trail(conn: psycopg.Connection, org_id: int, entity: str, key: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, at, actor, action, old_value, new_value, reason, hash FROM audit_trail"
        " WHERE org_id = %s AND entity = %s AND entity_key = %s ORDER BY id",
        (org_id, entity, key),
    ).fetchall()
    return [
        {
            "id": r[0],
            "at": r[1],
            "actor": r[2],
            "action": r[3],
            "old": r[4],
            "new": r[5],
            "reason": r[6],
            "hash": bytes(r[7]).hex(),
        }
        for r in rows
    ]
