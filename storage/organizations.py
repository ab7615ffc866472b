"""Organizations: the tenants (manufacturers, 3PLs) and their partners (carriers, customers, hospitals)."""

from __future__ import annotations

from typing import Any

import psycopg

from coldchain.errors import ConflictError
from storage.audit import record


def create(conn: psycopg.Connection, *, slug: str, name: str, kind: str, actor: str) -> dict[str, Any]:
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO organizations (slug, name, kind) VALUES (%s, %s, %s) RETURNING id, created_at",
                (slug, name.strip(), kind),
            ).fetchone()
            assert row is not None
            # The new tenant's trail starts with its own creation; the platform's records it too.
            for org in {int(row[0]), 1}:
                record(
                    conn,
                    org_id=org,
                    actor=actor,
                    action="create",
                    entity="organization",
                    key=slug,
                    new={"id": slug, "name": name.strip(), "kind": kind},
                )
    except psycopg.errors.UniqueViolation:
        raise ConflictError(f"organization {slug!r} exists already") from None
    return {"id": slug, "name": name.strip(), "kind": kind, "created_at": row[1]}


def list_all(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT slug, name, kind, created_at FROM organizations ORDER BY id").fetchall()
    return [{"id": r[0], "name": r[1], "kind": r[2], "created_at": r[3]} for r in rows]
