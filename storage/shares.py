"""Shipments shared with partner organizations, with a scope (readings, alerts, evidence, acknowledge)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from coldchain.errors import NotFoundError, ValidationError
from storage.audit import record

SCOPES = ("readings", "alerts", "evidence", "acknowledge")


@dataclass(frozen=True, slots=True)
class Share:
    id: int
    owner_org_id: int
    owner: str
    shipment_key: int
    shipment_id: str
    partner_org_id: int
    partner: str
    scope: tuple[str, ...]
    created_by: str
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "shipment": self.shipment_id,
            "organization": self.partner,
            "scope": list(self.scope),
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


_SELECT = (
    "SELECT x.id, x.owner_org_id, oo.slug, x.shipment_key, s.id, x.partner_org_id, po.slug, x.scope,"
    " x.created_by, x.created_at FROM shipment_shares x JOIN shipments s ON s.key = x.shipment_key"
    " JOIN organizations oo ON oo.id = x.owner_org_id JOIN organizations po ON po.id = x.partner_org_id"
    " WHERE x.revoked_at IS NULL"
)


def _share(row: tuple[Any, ...]) -> Share:
    return Share(
        id=int(row[0]),
        owner_org_id=int(row[1]),
        owner=row[2],
        shipment_key=int(row[3]),
        shipment_id=row[4],
        partner_org_id=int(row[5]),
        partner=row[6],
        scope=tuple(row[7]),
        created_by=row[8],
        created_at=row[9],
    )


def share(
    conn: psycopg.Connection, *, org: int, shipment_id: str, partner: str, scope: list[str], actor: str
) -> Share:
    """Share (or re-share with a new scope) one of the organization's shipments with a partner."""
    unknown = sorted(set(scope) - set(SCOPES))
    if unknown:
        raise ValidationError(
            f"unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)})", field="scope"
        )
    with conn.transaction():
        ship = conn.execute(
            "SELECT key FROM shipments WHERE org_id = %s AND id = %s", (org, shipment_id)
        ).fetchone()
        if ship is None:
            raise NotFoundError("shipment", shipment_id)
        target = conn.execute("SELECT id FROM organizations WHERE slug = %s", (partner,)).fetchone()
        if target is None or int(target[0]) == org:
            raise NotFoundError("organization", partner)
        old = conn.execute(
            "UPDATE shipment_shares SET revoked_at = now() WHERE shipment_key = %s AND partner_org_id = %s"
            " AND revoked_at IS NULL RETURNING scope",
            (ship[0], target[0]),
        ).fetchone()
        row = conn.execute(
            "INSERT INTO shipment_shares (owner_org_id, shipment_key, partner_org_id, scope, created_by)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (org, ship[0], target[0], sorted(set(scope)), actor),
        ).fetchone()
        assert row is not None
        record(
            conn,
            org_id=org,
            actor=actor,
            action="share",
            entity="shipment",
            key=shipment_id,
            old={"organization": partner, "scope": list(old[0])} if old else None,
            new={"organization": partner, "scope": sorted(set(scope))},
        )
        found = conn.execute(_SELECT + " AND x.id = %s", (row[0],)).fetchone()
    assert found is not None
    return _share(found)


def revoke(conn: psycopg.Connection, *, org: int, shipment_id: str, partner: str, actor: str) -> None:
    with conn.transaction():
        cur = conn.execute(
            "UPDATE shipment_shares x SET revoked_at = now() FROM shipments s, organizations po"
            " WHERE s.key = x.shipment_key AND po.id = x.partner_org_id AND x.owner_org_id = %s"
            " AND s.id = %s AND po.slug = %s AND x.revoked_at IS NULL",
            (org, shipment_id, partner),
        )
        if cur.rowcount == 0:
            raise NotFoundError("share", f"{shipment_id} with {partner}")
        record(
            conn,
            org_id=org,
            actor=actor,
            action="unshare",
            entity="shipment",
            key=shipment_id,
            old={"organization": partner},
        )


def of_shipment(conn: psycopg.Connection, *, org: int, shipment_id: str) -> list[Share]:
    rows = conn.execute(_SELECT + " AND x.owner_org_id = %s AND s.id = %s ORDER BY x.id", (org, shipment_id))
    return [_share(r) for r in rows.fetchall()]


def with_partner(conn: psycopg.Connection, *, partner_org: int) -> list[Share]:
    """Every live share with this partner organization."""
    rows = conn.execute(_SELECT + " AND x.partner_org_id = %s ORDER BY s.id, x.id", (partner_org,)).fetchall()
    return [_share(r) for r in rows]
