"""The application role's privileges: everything the services need, and no way to rewrite history.

Re-applied after every migration run, so a table added by a later migration is granted too, and
the protected tables lose their write privileges again whatever a migration granted.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

APP_ROLE = "coldchain_app"
# table -> privileges the application role may not hold on it
PROTECTED: dict[str, tuple[str, ...]] = {
    "audit_trail": ("INSERT", "UPDATE", "DELETE", "TRUNCATE"),  # append through audit_append() only
    "audit_heads": ("INSERT", "UPDATE", "DELETE", "TRUNCATE"),
    "alert_events": ("UPDATE", "DELETE", "TRUNCATE"),
    "signatures": ("UPDATE", "DELETE", "TRUNCATE"),
    "audit_checkpoints": ("UPDATE", "DELETE", "TRUNCATE"),
    "epcis_captures": ("UPDATE", "DELETE", "TRUNCATE"),  # captured documents are records
    "epcis_events": ("UPDATE", "DELETE", "TRUNCATE"),
    "lot_dispositions": ("UPDATE", "DELETE", "TRUNCATE"),  # QA decisions: signed, never rewritten
    "calibration_overrides": ("UPDATE", "DELETE", "TRUNCATE"),
    "schema_migrations": ("INSERT", "UPDATE", "DELETE", "TRUNCATE"),
    "preset_versions": ("INSERT", "UPDATE", "DELETE", "TRUNCATE"),  # released at migration only
}


def role_exists(conn: psycopg.Connection, role: str = APP_ROLE) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def apply_app_grants(conn: psycopg.Connection, role: str = APP_ROLE) -> None:
    """Grant the application role its DML on every table of the schema, then take back the rest."""
    if not role_exists(conn, role):
        return
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(ident)
    )
    conn.execute(sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))
    present = {
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
            (list(PROTECTED),),
        )
    }
    for table, privileges in PROTECTED.items():
        if table not in present:
            continue
        conn.execute(
            sql.SQL("REVOKE {} ON {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(table), ident
            )
        )
