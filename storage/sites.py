"""Sites by GLN (warehouses, pharmacies, hubs): created, read, listed and edited one at a time,
each edit against the version it was read at (bulk: storage/imports.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from coldchain.errors import ConflictError, NotFoundError
from coldchain.master_data import Versions, check_version
from storage.audit import record
from storage.rows import fetch_all, fetch_one


@dataclass(frozen=True, slots=True)
class SiteRow:
    gln: str
    name: str
    address: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    def document(self) -> dict[str, Any]:
        return {"gln": self.gln, "name": self.name, "address": self.address}


_SELECT = "SELECT gln, name, address, version, created_at, updated_at FROM sites"


def get_site(conn: psycopg.Connection, *, org: int, gln: str) -> SiteRow:
    row = fetch_one(conn, SiteRow, _SELECT + " WHERE org_id = %s AND gln = %s", (org, gln))
    if row is None:
        raise NotFoundError("site", gln)
    return row


def list_sites(
    conn: psycopg.Connection, *, org: int, name_prefix: str | None, after: str | None, limit: int
) -> list[SiteRow]:
    """A page in GLN order after `after`."""
    return fetch_all(
        conn,
        SiteRow,
        _SELECT + " WHERE org_id = %(org)s AND (%(after)s::text IS NULL OR gln > %(after)s)"
        " AND (%(prefix)s::text IS NULL OR starts_with(lower(name), lower(%(prefix)s)))"
        " ORDER BY gln LIMIT %(limit)s",
        {"org": org, "after": after, "prefix": name_prefix, "limit": limit},
    )


def create_site(
    conn: psycopg.Connection, *, org: int, gln: str, name: str, address: str | None, actor: str
) -> SiteRow:
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO sites (org_id, gln, name, address) VALUES (%s, %s, %s, %s)",
                    (org, gln, name, address),
                )
        except pg_errors.UniqueViolation:
            raise ConflictError(f"site {gln} is already registered") from None
        created = get_site(conn, org=org, gln=gln)
        record(conn, org_id=org, actor=actor, action="create", entity="site", key=gln, new=created.document())
    return created


def update_site(
    conn: psycopg.Connection, *, org: int, gln: str, changes: dict[str, Any], accepted: Versions, actor: str
) -> SiteRow:
    with conn.transaction():
        current = fetch_one(conn, SiteRow, _SELECT + " WHERE org_id = %s AND gln = %s FOR UPDATE", (org, gln))
        if current is None:
            raise NotFoundError("site", gln)
        check_version(f"site {gln}", current.version, accepted)
        before = current.document()
        diff = {k: v for k, v in changes.items() if before.get(k) != v}
        if not diff:
            return current
        merged = {**before, **diff}
        conn.execute(
            "UPDATE sites SET name = %s, address = %s WHERE org_id = %s AND gln = %s",
            (merged["name"], merged["address"], org, gln),
        )
        after = get_site(conn, org=org, gln=gln)
        record(
            conn,
            org_id=org,
            actor=actor,
            action="update",
            entity="site",
            key=gln,
            old={k: before[k] for k in diff},
            new={k: merged[k] for k in diff},
        )
    return after
