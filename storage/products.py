"""Products (trade items by GTIN): their labelled range, stability budget, activation energy and
default alarm profile; created, read, listed and edited one at a time (bulk: storage/imports.py).

An edit names the version it was made against (`accepted`); the row is locked, its version
compared and the change written and audited with old and new values in one transaction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from coldchain.errors import ConflictError, NotFoundError
from coldchain.master_data import Versions, check_version
from storage.audit import record
from storage.rows import fetch_all, fetch_one


@dataclass(frozen=True, slots=True)
class ProductRow:
    gtin: str
    name: str
    range_min_c: float | None
    range_max_c: float | None
    stability_budget_s: int | None
    activation_energy_kj_mol: float | None
    default_profile: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    def document(self) -> dict[str, Any]:
        """The editable values, as the audit trail records them."""
        values = asdict(self)
        for name in ("version", "created_at", "updated_at"):
            values.pop(name)
        return values


# Columns of `products` an edit may set; `default_profile` lives in product_profiles.
EDITABLE = ("name", "range_min_c", "range_max_c", "stability_budget_s", "activation_energy_kj_mol")

_SELECT = (
    "SELECT p.gtin, p.name, p.range_min_c, p.range_max_c, p.stability_budget_s,"
    " p.activation_energy_kj_mol, pp.profile_id AS default_profile, p.version, p.created_at,"
    " p.updated_at FROM products p LEFT JOIN product_profiles pp ON pp.org_id = p.org_id AND pp.gtin = p.gtin"
)


def get_product(conn: psycopg.Connection, *, org: int, gtin: str) -> ProductRow:
    row = fetch_one(conn, ProductRow, _SELECT + " WHERE p.org_id = %s AND p.gtin = %s", (org, gtin))
    if row is None:
        raise NotFoundError("product", gtin)
    return row


def list_products(
    conn: psycopg.Connection, *, org: int, name_prefix: str | None, after: str | None, limit: int
) -> list[ProductRow]:
    """A page in GTIN order after `after` (keyset: rows added during a walk never shift it)."""
    return fetch_all(
        conn,
        ProductRow,
        _SELECT + " WHERE p.org_id = %(org)s AND (%(after)s::text IS NULL OR p.gtin > %(after)s)"
        " AND (%(prefix)s::text IS NULL OR starts_with(lower(p.name), lower(%(prefix)s)))"
        " ORDER BY p.gtin LIMIT %(limit)s",
        {"org": org, "after": after, "prefix": name_prefix, "limit": limit},
    )


def create_product(
    conn: psycopg.Connection, *, org: int, gtin: str, values: dict[str, Any], actor: str
) -> ProductRow:
    """A new product (409 if the GTIN is registered) and its default profile, audited."""
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO products (org_id, gtin, name, range_min_c, range_max_c, stability_budget_s,"
                    " activation_energy_kj_mol) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (org, gtin, *(values.get(c) for c in EDITABLE)),
                )
        except pg_errors.UniqueViolation:
            raise ConflictError(f"product {gtin} is already registered") from None
        if values.get("default_profile") is not None:
            _set_profile(conn, org=org, gtin=gtin, profile=values["default_profile"])
        created = get_product(conn, org=org, gtin=gtin)
        record(
            conn, org_id=org, actor=actor, action="create", entity="product", key=gtin, new=created.document()
        )
    return created


def update_product(
    conn: psycopg.Connection,
    *,
    org: int,
    gtin: str,
    changes: dict[str, Any],
    accepted: Versions,
    actor: str,
    reason: str | None = None,
) -> ProductRow:
    """Apply the changed fields if the product is still at an accepted version (else 412)."""
    with conn.transaction():
        locked = conn.execute(
            "SELECT version FROM products WHERE org_id = %s AND gtin = %s FOR UPDATE", (org, gtin)
        ).fetchone()
        if locked is None:
            raise NotFoundError("product", gtin)
        current = get_product(conn, org=org, gtin=gtin)
        check_version(f"product {gtin}", current.version, accepted)
        before = current.document()
        diff = {k: v for k, v in changes.items() if before.get(k) != v}
        if not diff:
            return current
        columns = {k: v for k, v in diff.items() if k in EDITABLE}
        conn.execute(
            "UPDATE products SET name = %s, range_min_c = %s, range_max_c = %s, stability_budget_s = %s,"
            " activation_energy_kj_mol = %s, updated_at = clock_timestamp() WHERE org_id = %s AND gtin = %s",
            (*(columns.get(c, before[c]) for c in EDITABLE), org, gtin),
        )
        if "default_profile" in diff:
            _set_profile(conn, org=org, gtin=gtin, profile=diff["default_profile"])
        after = get_product(conn, org=org, gtin=gtin)
        record(
            conn,
            org_id=org,
            actor=actor,
            action="update",
            entity="product",
            key=gtin,
            old={k: before[k] for k in diff},
            new={k: after.document()[k] for k in diff},
            reason=reason,
        )
    return after


def _set_profile(conn: psycopg.Connection, *, org: int, gtin: str, profile: str | None) -> None:
    if profile is None:
        conn.execute("DELETE FROM product_profiles WHERE org_id = %s AND gtin = %s", (org, gtin))
        return
    conn.execute(
        "INSERT INTO product_profiles (org_id, gtin, profile_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (org_id, gtin) DO UPDATE SET profile_id = EXCLUDED.profile_id, updated_at = now()",
        (org, gtin, profile),
    )
