"""Schema migrations: numbered SQL files, applied once each, with a TimescaleDB-aware branch.

Files are `NNN_name.sql` (every server), `NNN_name.timescale.sql` (only on the Timescale engine)
and `NNN_name.plain.sql` (only on plain PostgreSQL). They run in name order, each in its own
transaction, under an advisory lock so two services starting together do not race. A transaction
that loses a race on a catalog row to a session outside the lock (a GRANT from an operator's
console, a TimescaleDB policy job started by an earlier migration) fails with "tuple concurrently
updated" (or "deleted"); it is run again, since it changed nothing.

The engine is chosen once, when the schema is first created, and kept afterwards:

- `timescale`: readings become a hypertable; refused unless the extension is installed and in
  `shared_preload_libraries`.
- `plain`: BRIN and `date_bin`; refused on a database that already holds the Timescale schema.
- `auto` (the default): a database keeps the engine it was created with; a fresh one takes
  Timescale when the server can run it, plain otherwise (with a warning that says what to set when
  the extension is installed but not preloaded). A database that holds the Timescale schema on a
  server that cannot run it is refused, never silently migrated plain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Literal

import psycopg

from coldchain.errors import ConfigurationError
from storage import preset_versions
from storage.roles import apply_app_grants

log = logging.getLogger(__name__)
_LOCK_ID = 0x636F6C64  # "cold"
_READINGS_STORAGE = "011_readings_storage"

Engine = Literal["auto", "timescale", "plain"]
ENGINES: tuple[Engine, ...] = ("auto", "timescale", "plain")
PRELOAD_HINT = (
    "set shared_preload_libraries = 'timescaledb' (and timescaledb.telemetry_level = off) in"
    " postgresql.conf and restart PostgreSQL"
)


@dataclass(frozen=True, slots=True)
class ServerTimescale:
    """What a server and one of its databases say about TimescaleDB."""

    installed: bool  # listed in pg_available_extensions
    preloaded: bool  # named in shared_preload_libraries
    created: bool  # CREATE EXTENSION done in this database
    schema: Literal["timescale", "plain"] | None  # the readings storage migrated so far

    @property
    def usable(self) -> bool:
        return self.installed and self.preloaded


def timescale_state(conn: psycopg.Connection) -> ServerTimescale:
    """The server's and this database's TimescaleDB state (schema_migrations may not exist yet)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " 'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'),"
        " ' ', ''), ',')),"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),"
        " to_regclass('schema_migrations') IS NOT NULL"
    ).fetchone()
    assert row is not None
    installed, preloaded, created, has_log = row
    schema: Literal["timescale", "plain"] | None = None
    if has_log:
        for (version,) in conn.execute(
            "SELECT version FROM schema_migrations WHERE version LIKE %s", (_READINGS_STORAGE + ".%",)
        ):
            schema = "timescale" if version.endswith(".timescale") else "plain"
    if schema is None and created:
        schema = "timescale"
    return ServerTimescale(bool(installed), bool(preloaded), bool(created), schema)


def timescale_available(conn: psycopg.Connection) -> bool:
    """True when `CREATE EXTENSION timescaledb` can succeed: installed *and* preloaded.

    An installed but not preloaded extension is listed in `pg_available_extensions`, yet creating
    it fails ("must be preloaded").
    """
    return timescale_state(conn).usable


def choose_engine(state: ServerTimescale, engine: Engine) -> bool:
    """True for the Timescale branch; ConfigurationError (saying what to do) when none can work."""
    if engine not in ENGINES:
        raise ConfigurationError(f"DATABASE_ENGINE must be one of {', '.join(ENGINES)}, not {engine!r}")
    if state.schema == "timescale" or engine == "timescale":
        if engine == "plain":
            raise ConfigurationError(
                "DATABASE_ENGINE=plain, but this database already holds the TimescaleDB schema"
                " (readings are a hypertable); use DATABASE_ENGINE=auto or timescale"
            )
        if state.schema == "plain":
            raise ConfigurationError(
                "DATABASE_ENGINE=timescale, but this database was created on plain PostgreSQL;"
                " keep DATABASE_ENGINE=auto (or plain), or load its data into a fresh database"
            )
        if not state.installed:
            raise ConfigurationError(
                "TimescaleDB is not installed on this PostgreSQL server"
                + (", but this database holds the TimescaleDB schema" if state.schema else "")
                + ": install the timescaledb package for this PostgreSQL version (see README)"
                + ("" if state.schema else ", or set DATABASE_ENGINE=plain")
            )
        if not state.preloaded:
            raise ConfigurationError(
                "TimescaleDB is installed but not preloaded"
                + (" and this database holds the TimescaleDB schema" if state.schema else "")
                + f": {PRELOAD_HINT}"
                + ("" if state.schema else ", or set DATABASE_ENGINE=plain")
            )
        return True
    if state.schema == "plain" or engine == "plain":
        return False
    if state.usable:
        return True
    if state.installed:
        log.warning(
            "TimescaleDB is installed but not preloaded, so this database is created on plain"
            " PostgreSQL; for hypertables %s before the first start (DATABASE_ENGINE=timescale"
            " makes this an error)", PRELOAD_HINT,
        )
    return False


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


# Both forms of the race: a catalog row updated, or deleted (a policy job's row when a later
# migration drops the aggregate it refreshes), by another session since this one read it.
_CATALOG_RACES = ("tuple concurrently updated", "tuple concurrently deleted")
_CATALOG_RACE_TRIES = 5


def _in_transaction(conn: psycopg.Connection, step: str, work: Callable[[], None]) -> None:
    """`work` in one transaction, run again when it lost a race on a catalog row."""
    for attempt in range(1, _CATALOG_RACE_TRIES + 1):
        try:
            with conn.transaction():
                work()
            return
        except psycopg.errors.InternalError as exc:
            if not any(r in str(exc) for r in _CATALOG_RACES) or attempt == _CATALOG_RACE_TRIES:
                raise
            log.warning("migration step %s lost a race on a catalog row; running it again (%d)",
                        step, attempt)


def _apply(conn: psycopg.Connection, version: str, sql: str) -> None:
    conn.execute(sql.encode())  # bytes: run as a simple-query script
    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))


def _grant_and_freeze(conn: psycopg.Connection) -> None:
    preset_versions.freeze(conn)
    apply_app_grants(conn)


def migrate(dsn: str, *, engine: Engine = "auto") -> list[str]:
    """Apply what is missing; return the versions applied now."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            timescale = choose_engine(timescale_state(conn), engine)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            if timescale:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            for version, sql in migration_files(timescale=timescale):
                if version in done:
                    continue
                _in_transaction(conn, version, partial(_apply, conn, version, sql))
                log.info("applied migration %s", version)
                applied_now.append(version)
            _in_transaction(conn, "grants", partial(_grant_and_freeze, conn))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now

