"""Bulk master-data import: rows into a staging table by binary COPY, set-based checks, upserts.

Everything runs in the caller's transaction: `stage` fills a temporary table (dropped at commit),
the `check_*` queries return what the database knows is wrong with staged rows (unknown product,
overlapping assignment, ...), and the `apply_*` statements upsert with `ON CONFLICT ... DO UPDATE
... WHERE` the values differ, so a re-import of the same file updates nothing. Counts come from
`RETURNING (xmax = 0)`: true for a row inserted, false for one updated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from storage.audit import record
from storage.listen import Wakeup, wake

# Staging tables: (column, PostgreSQL type); the first column is always the file's row number.
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "products": (
        ("row", "int4"),
        ("gtin", "bpchar"),
        ("name", "text"),
        ("range_min_c", "float4"),
        ("range_max_c", "float4"),
        ("stability_budget_s", "int8"),
        ("activation_energy_kj_mol", "float4"),
        ("default_profile", "text"),
    ),
    "lots": (
        ("row", "int4"),
        ("gtin", "bpchar"),
        ("lot", "text"),
        ("expiry", "date"),
        ("quantity", "int4"),
        ("serials", "text[]"),
        ("stability_budget_s", "int8"),
    ),
    "sites": (("row", "int4"), ("gln", "bpchar"), ("name", "text"), ("address", "text")),
    "shipments": (
        ("row", "int4"),
        ("id", "text"),
        ("origin", "text"),
        ("destination", "text"),
        ("origin_gln", "bpchar"),
        ("destination_gln", "bpchar"),
        ("profile_id", "text"),
        ("profile_version", "int4"),
        ("carrier", "text"),
        ("mode", "text"),
        ("planned_departure", "timestamptz"),
        ("planned_arrival", "timestamptz"),
    ),
    "shipment_lines": (
        ("row", "int4"),
        ("shipment_id", "text"),
        ("gtin", "bpchar"),
        ("lot", "text"),
        ("quantity", "int4"),
    ),
    "assignments": (
        ("row", "int4"),
        ("device_id", "text"),
        ("shipment_id", "text"),
        ("starts", "timestamptz"),
        ("ends", "timestamptz"),
    ),
}

Problem = tuple[int, str, str]  # (row, field, reason)
Counts = dict[str, tuple[int, int]]  # table -> (inserted, updated)


def _stage_table(name: str) -> sql.Identifier:
    return sql.Identifier(f"import_{name}")


def stage(conn: psycopg.Connection, name: str, rows: Iterable[Sequence[Any]]) -> int:
    """Create the temporary staging table `name` and binary-COPY the rows into it."""
    columns = STAGES[name]
    table = _stage_table(name)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            table,
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns),
        )
    )
    count = 0
    with (
        conn.cursor() as cur,
        cur.copy(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                table, sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns)
            )
        ) as copy,
    ):
        # bpchar has the same binary form as text, which psycopg can dump.
        copy.set_types(["text" if t == "bpchar" else t for _, t in columns])
        for row in rows:
            copy.write_row(row)
            count += 1
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    return count


def _problems(conn: psycopg.Connection, query: str, params: Sequence[Any]) -> list[Problem]:
    return [(int(r[0]), str(r[1]), str(r[2])) for r in conn.execute(query, params).fetchall()]


def _counted(conn: psycopg.Connection, statement: str, params: Sequence[Any]) -> tuple[int, int]:
    row = conn.execute(
        f"WITH w AS ({statement} RETURNING (xmax = 0) AS inserted)"
        " SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM w",
        params,
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# --- products ------------------------------------------------------------------------------------


def custom_profile_ids(conn: psycopg.Connection, *, org: int) -> dict[str, int]:
    """Custom alarm profiles of the organization and their latest version."""
    rows = conn.execute(
        "SELECT id, max(version) FROM alarm_profiles WHERE org_id = %s GROUP BY id", (org,)
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def check_product_limits(conn: psycopg.Connection, *, org: int) -> list[Problem]:
    """Rows that would change what alarms and budgets of a registered product are judged by
    (labelled range, stability budget, activation energy, default profile): QA's to change."""
    return _problems(
        conn,
        "SELECT s.row, CASE"
        "  WHEN (p.range_min_c, p.range_max_c) IS DISTINCT FROM (s.range_min_c, s.range_max_c)"
        "  THEN 'range_min_c'"
        "  WHEN p.stability_budget_s IS DISTINCT FROM s.stability_budget_s THEN 'stability_budget_s'"
        "  WHEN p.activation_energy_kj_mol IS DISTINCT FROM s.activation_energy_kj_mol"
        "  THEN 'activation_energy_kj_mol' ELSE 'default_profile' END,"
        " 'product ' || s.gtin || ' is registered: changing its labelled range, stability budget,"
        " activation energy or default profile is QA''s (change_profile)'"
        " FROM import_products s JOIN products p ON p.org_id = %s AND p.gtin = s.gtin"
        " LEFT JOIN product_profiles pp ON pp.org_id = p.org_id AND pp.gtin = p.gtin"
        " WHERE (p.range_min_c, p.range_max_c, p.stability_budget_s, p.activation_energy_kj_mol)"
        "  IS DISTINCT FROM (s.range_min_c, s.range_max_c, s.stability_budget_s, s.activation_energy_kj_mol)"
        "  OR (s.default_profile IS NOT NULL AND pp.profile_id IS DISTINCT FROM s.default_profile)"
        " ORDER BY 1",
        (org,),
    )


def check_lot_budgets(conn: psycopg.Connection, *, org: int) -> list[Problem]:
    """Rows naming another stability budget for a registered lot: QA's to change."""
    return _problems(
        conn,
        "SELECT s.row, 'stability_budget_s', 'lot ' || s.gtin || '/' || s.lot || ' is registered:"
        " changing its stability budget is QA''s (change_profile)' FROM import_lots s"
        " JOIN lots l ON l.org_id = %s AND l.gtin = s.gtin AND l.lot = s.lot"
        " WHERE s.stability_budget_s IS NOT NULL"
        " AND l.stability_budget_s IS DISTINCT FROM s.stability_budget_s"
        " ORDER BY 1",
        (org,),
    )


def apply_products(conn: psycopg.Connection, *, org: int) -> Counts:
    """Upsert products and their default profiles; "products" counts a product once, whichever
    of the two changed ("product_profiles" counts the profile rows themselves)."""
    products = conn.execute(
        "INSERT INTO products AS p (org_id, gtin, name, range_min_c, range_max_c, stability_budget_s,"
        " activation_energy_kj_mol)"
        " SELECT %s, gtin, name, range_min_c, range_max_c, stability_budget_s, activation_energy_kj_mol"
        " FROM import_products"
        " ON CONFLICT (org_id, gtin) DO UPDATE SET name = EXCLUDED.name,"
        " range_min_c = EXCLUDED.range_min_c, range_max_c = EXCLUDED.range_max_c,"
        " stability_budget_s = EXCLUDED.stability_budget_s,"
        " activation_energy_kj_mol = EXCLUDED.activation_energy_kj_mol, updated_at = now()"
        " WHERE (p.name, p.range_min_c, p.range_max_c, p.stability_budget_s, p.activation_energy_kj_mol)"
        " IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.range_min_c, EXCLUDED.range_max_c,"
        " EXCLUDED.stability_budget_s, EXCLUDED.activation_energy_kj_mol)"
        " RETURNING gtin, (xmax = 0)",
        (org,),
    ).fetchall()
    profiles = conn.execute(
        "INSERT INTO product_profiles AS pp (org_id, gtin, profile_id)"
        " SELECT %s, gtin, default_profile FROM import_products WHERE default_profile IS NOT NULL"
        " ON CONFLICT (org_id, gtin) DO UPDATE SET profile_id = EXCLUDED.profile_id, updated_at = now()"
        " WHERE pp.profile_id IS DISTINCT FROM EXCLUDED.profile_id"
        " RETURNING gtin, (xmax = 0)",
        (org,),
    ).fetchall()
    inserted = {g for g, new in products if new}
    touched = {g for g, _ in products} | {g for g, _ in profiles}
    return {
        "products": (len(inserted), len(touched - inserted)),
        "product_profiles": (sum(1 for _, new in profiles if new), sum(1 for _, new in profiles if not new)),
    }


# --- lots ------------------------------------------------------------------------------------------


def check_lots(conn: psycopg.Connection, *, org: int) -> list[Problem]:
    return _problems(
        conn,
        "SELECT s.row, 'gtin', 'unknown product ' || s.gtin FROM import_lots s"
        " WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.org_id = %s AND p.gtin = s.gtin)"
        " UNION ALL"
        " SELECT s.row, 'expiry', 'lot ' || s.gtin || '/' || s.lot || ' is registered with expiry '"
        " || l.expiry FROM import_lots s JOIN lots l ON l.org_id = %s AND l.gtin = s.gtin AND l.lot = s.lot"
        " WHERE s.expiry IS NOT NULL AND l.expiry IS NOT NULL AND s.expiry <> l.expiry"
        " ORDER BY 1",
        (org, org),
    )


def apply_lots(conn: psycopg.Connection, *, org: int) -> Counts:
    # A lot that names no stability budget keeps the one it has, or takes its product's. Only
    # new or different rows are kept, resolved into a table before the upsert: a join is cheaper
    # than a conflict per row (a re-import is nearly free), and an INSERT that read `lots` while
    # filling it would rescan its own new rows whenever the planner takes `lots` for empty.
    conn.execute(
        "CREATE TEMP TABLE import_lots_resolved ON COMMIT DROP AS"
        " SELECT * FROM (SELECT s.gtin, s.lot, coalesce(s.expiry, e.expiry) AS expiry, s.quantity, s.serials,"
        "  coalesce(s.stability_budget_s, e.stability_budget_s, p.stability_budget_s) AS stability_budget_s,"
        "  e.lot IS NULL AS new, e.expiry AS old_expiry, e.quantity AS old_quantity,"
        "  e.serials AS old_serials, e.stability_budget_s AS old_budget"
        "  FROM import_lots s JOIN products p ON p.org_id = %s AND p.gtin = s.gtin"
        "  LEFT JOIN lots e ON e.org_id = %s AND e.gtin = s.gtin AND e.lot = s.lot) AS x"
        " WHERE new OR (expiry, quantity, serials, stability_budget_s)"
        "  IS DISTINCT FROM (old_expiry, old_quantity, old_serials, old_budget)",
        (org, org),
    )
    lots = _counted(
        conn,
        "INSERT INTO lots AS l (org_id, gtin, lot, expiry, quantity, serials, stability_budget_s)"
        " SELECT %s, gtin, lot, expiry, quantity, serials, stability_budget_s FROM import_lots_resolved"
        " ON CONFLICT (org_id, gtin, lot) DO UPDATE SET expiry = coalesce(EXCLUDED.expiry, l.expiry),"
        " quantity = EXCLUDED.quantity, serials = EXCLUDED.serials,"
        " stability_budget_s = EXCLUDED.stability_budget_s, updated_at = now()"
        " WHERE (coalesce(EXCLUDED.expiry, l.expiry), EXCLUDED.quantity, EXCLUDED.serials,"
        " EXCLUDED.stability_budget_s)"
        " IS DISTINCT FROM (l.expiry, l.quantity, l.serials, l.stability_budget_s)",
        (org,),
    )
    return {"lots": lots}


# --- sites -----------------------------------------------------------------------------------------


def apply_sites(conn: psycopg.Connection, *, org: int) -> Counts:
    sites = _counted(
        conn,
        "INSERT INTO sites AS t (org_id, gln, name, address) SELECT %s, gln, name, address FROM import_sites"
        " ON CONFLICT (org_id, gln) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address,"
        " updated_at = now() WHERE (t.name, t.address) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.address)",
        (org,),
    )
    return {"sites": sites}


# --- shipments -------------------------------------------------------------------------------------


def check_shipments(conn: psycopg.Connection, *, org: int) -> list[Problem]:
    return _problems(
        conn,
        "SELECT s.row, 'profile', 'shipment ' || s.id || ' travels under profile ' || x.profile_id"
        " || '; an import does not change it' FROM import_shipments s"
        " JOIN shipments x ON x.org_id = %s AND x.id = s.id WHERE x.profile_id <> s.profile_id"
        " UNION ALL"
        " SELECT s.row, 'lot', 'unknown lot ' || s.gtin || '/' || s.lot FROM import_shipment_lines s"
        " WHERE NOT EXISTS (SELECT 1 FROM lots l WHERE l.org_id = %s AND l.gtin = s.gtin AND l.lot = s.lot)"
        " ORDER BY 1",
        (org, org),
    )


def apply_shipments(conn: psycopg.Connection, *, org: int) -> Counts:
    headers = _counted(
        conn,
        "INSERT INTO shipments AS x (org_id, id, origin, destination, origin_gln, destination_gln,"
        " profile_id, profile_version, carrier, mode, planned_departure, planned_arrival)"
        " SELECT %s, id, origin, destination, origin_gln, destination_gln, profile_id, profile_version,"
        " carrier, mode, planned_departure, planned_arrival FROM import_shipments"
        " ON CONFLICT (org_id, id) DO UPDATE SET origin = EXCLUDED.origin,"
        " destination = EXCLUDED.destination, origin_gln = EXCLUDED.origin_gln,"
        " destination_gln = EXCLUDED.destination_gln, carrier = EXCLUDED.carrier, mode = EXCLUDED.mode,"
        " planned_departure = EXCLUDED.planned_departure, planned_arrival = EXCLUDED.planned_arrival,"
        " updated_at = now()"
        " WHERE (x.origin, x.destination, x.origin_gln, x.destination_gln, x.carrier, x.mode,"
        " x.planned_departure, x.planned_arrival) IS DISTINCT FROM (EXCLUDED.origin, EXCLUDED.destination,"
        " EXCLUDED.origin_gln, EXCLUDED.destination_gln, EXCLUDED.carrier, EXCLUDED.mode,"
        " EXCLUDED.planned_departure, EXCLUDED.planned_arrival)",
        (org,),
    )
    lines = _counted(
        conn,
        "INSERT INTO shipment_lots AS sl (shipment_key, org_id, gtin, lot, quantity)"
        " SELECT x.key, %s, s.gtin, s.lot, s.quantity FROM import_shipment_lines s"
        " JOIN shipments x ON x.org_id = %s AND x.id = s.shipment_id"
        " ON CONFLICT (shipment_key, gtin, lot) DO UPDATE SET quantity = EXCLUDED.quantity"
        " WHERE sl.quantity IS DISTINCT FROM EXCLUDED.quantity",
        (org, org),
    )
    return {"shipments": headers, "shipment_lots": lines}


# --- assignments -----------------------------------------------------------------------------------


def check_assignments(conn: psycopg.Connection, *, org: int) -> list[Problem]:
    """Unknown devices or shipments, and windows overlapping an existing, different assignment."""
    return _problems(
        conn,
        "SELECT s.row, 'device', 'unknown device ' || s.device_id FROM import_assignments s"
        " WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.org_id = %s AND d.id = s.device_id)"
        " UNION ALL"
        " SELECT s.row, 'shipment', 'unknown shipment ' || s.shipment_id FROM import_assignments s"
        " WHERE NOT EXISTS (SELECT 1 FROM shipments x WHERE x.org_id = %s AND x.id = s.shipment_id)"
        " UNION ALL"
        " SELECT s.row, 'from', 'overlapping assignment: device ' || s.device_id || ' rides with shipment '"
        " || x.id || ' from ' || lower(a.during) || coalesce(' to ' || upper(a.during), '')"
        " FROM import_assignments s JOIN devices d ON d.org_id = %s AND d.id = s.device_id"
        " JOIN device_assignments a ON a.device_key = d.key AND a.during && tstzrange(s.starts, s.ends, '[)')"
        " JOIN shipments x ON x.key = a.shipment_key"
        " WHERE NOT (x.id = s.shipment_id AND a.during = tstzrange(s.starts, s.ends, '[)'))"
        " ORDER BY 1",
        (org, org, org),
    )


def apply_assignments(conn: psycopg.Connection, *, org: int) -> Counts:
    """Insert the new windows; readings already stored in them, on no shipment, join the shipment
    and are queued for the rules (late), as ingest would have linked and queued them."""
    conn.execute(
        "CREATE TEMP TABLE import_new_assignments ON COMMIT DROP AS"
        " SELECT d.key AS device_key, x.key AS shipment_key, tstzrange(s.starts, s.ends, '[)') AS during"
        " FROM import_assignments s JOIN devices d ON d.org_id = %s AND d.id = s.device_id"
        " JOIN shipments x ON x.org_id = %s AND x.id = s.shipment_id"
        " WHERE NOT EXISTS (SELECT 1 FROM device_assignments a WHERE a.device_key = d.key"
        " AND a.shipment_key = x.key AND a.during = tstzrange(s.starts, s.ends, '[)'))",
        (org, org),
    )
    inserted = conn.execute(
        "INSERT INTO device_assignments (org_id, device_key, shipment_key, during)"
        " SELECT %s, device_key, shipment_key, during FROM import_new_assignments",
        (org,),
    ).rowcount
    relinked = conn.execute(
        "WITH moved AS (UPDATE readings r SET shipment_key = n.shipment_key FROM import_new_assignments n"
        " WHERE r.org_id = %s AND r.device_key = n.device_key AND r.t <@ n.during AND r.shipment_key IS NULL"
        " RETURNING r.device_key, r.shipment_key, r.t, r.c, r.rh)"
        " INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, late, min_c, max_c,"
        " min_rh, max_rh)"
        " SELECT %s, device_key, shipment_key, min(t), max(t), true, min(c), max(c), min(rh), max(rh)"
        " FROM moved GROUP BY device_key, shipment_key",
        (org, org),
    ).rowcount
    if relinked:
        wake(conn, Wakeup.RULES)
    return {"device_assignments": (inserted, 0)}


def newly_assigned_devices(conn: psycopg.Connection) -> list[str]:
    """The devices `apply_assignments` gave a new window (in its transaction), in id order."""
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT d.id FROM import_new_assignments n JOIN devices d ON d.key = n.device_key"
            " ORDER BY d.id"
        )
    ]


# --- the record of an import -----------------------------------------------------------------------


def record_import(
    conn: psycopg.Connection,
    *,
    org: int,
    kind: str,
    sha256: str,
    rows: int,
    inserted: int,
    updated: int,
    counts: Counts,
    actor: str,
) -> int:
    """One row per committed import that changed something, and its audit row."""
    row = conn.execute(
        "INSERT INTO imports (org_id, kind, sha256, rows, inserted, updated, actor)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (org, kind, sha256, rows, inserted, updated, actor),
    ).fetchone()
    assert row is not None
    import_id = int(row[0])
    record(
        conn,
        org_id=org,
        actor=actor,
        action="import",
        entity=kind,
        key=f"import/{import_id}",
        new={
            "sha256": sha256,
            "rows": rows,
            "changes": {table: {"inserted": i, "updated": u} for table, (i, u) in counts.items()},
        },
    )
    return import_id
