"""Schema migrations: numbered SQL files, applied once each, with a TimescaleDB-aware branch.

Files are `NNN_name.sql` (every server), `NNN_name.timescale.sql` (only when the timescaledb
extension is available) and `NNN_name.plain.sql` (only when it is not). They run in name order,
each in its own transaction, under an advisory lock so two services starting together do not race.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from storage.roles import apply_app_grants

log = logging.getLogger(__name__)
_LOCK_ID = 0x636F6C64  # "cold"


def timescale_available(conn: psycopg.Connection) -> bool:
    """True when `CREATE EXTENSION timescaledb` can succeed: installed *and* preloaded.

    An installed but not preloaded extension is listed in `pg_available_extensions`, yet creating
    it fails ("must be preloaded"); such a server takes the plain schema.
    """
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        " AND 'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'),"
        " ' ', ''), ','))"
    ).fetchone()
    return row is not None


def migration_files(*, timescale: bool) -> list[tuple[str, str]]:
    """(version, SQL text) in order, for this server's flavour."""
    folder = resources.files("storage") / "migrations"
    chosen: list[tuple[str, str]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        name = entry.name
        if not name.endswith(".sql"):
            continue
        if name.endswith(".timescale.sql") and not timescale:
            continue
        if name.endswith(".plain.sql") and timescale:
            continue
        chosen.append((name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return chosen


def migrate(dsn: str) -> list[str]:
    """Apply what is missing; return the versions applied now."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            timescale = timescale_available(conn)
            if timescale:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            for version, sql in migration_files(timescale=timescale):
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())  # bytes: run as a simple-query script
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", version)
                applied_now.append(version)
            with conn.transaction():
                apply_app_grants(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now
