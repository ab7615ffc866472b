"""Choosing the engine for a database: DATABASE_ENGINE auto, timescale or plain, against servers
with TimescaleDB installed but not preloaded, preloaded, and databases created on either."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg
import pytest

from coldchain.errors import ConfigurationError
from coldchain.settings import Settings
from embedded import PostgresServer
from embedded.postgres import find_bindir, timescaledb_installed
from storage.migrate import inspect, migrate
from tests.support.ingest import ROOT

needs_timescale = pytest.mark.skipif(
    not timescaledb_installed(find_bindir()), reason="TimescaleDB is not installed here"
)


@pytest.fixture(scope="module")
def unloaded() -> Iterator[PostgresServer]:
    """A cluster with TimescaleDB installed but not preloaded: the state right after installing."""
    server = PostgresServer(fast_and_unsafe=True, timescale=False)
    server.start()
    yield server
    server.destroy()


def _fresh(server: PostgresServer, name: str) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn_for(name)


def _cli_migrate(dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "db", "migrate"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DATABASE_URL": dsn, **env},
    )


def test_engine_setting_takes_three_values() -> None:
    assert Settings().database_engine == "auto"
    assert Settings(database_engine="plain").database_engine == "plain"
    with pytest.raises(ValueError, match="database_engine"):
        Settings(database_engine="influx")


@needs_timescale
def test_auto_on_an_unloaded_extension_goes_plain_and_says_what_to_set(
    unloaded: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = _fresh(unloaded, "auto_unloaded")
    with caplog.at_level(logging.WARNING, logger="storage.migrate"):
        applied = migrate(dsn)
    assert "011_readings_storage.plain" in applied
    assert any("shared_preload_libraries = 'timescaledb'" in r.getMessage() for r in caplog.records)
    with psycopg.connect(dsn) as conn:
        state = inspect(conn)
    assert (state.installed, state.preloaded, state.created, state.schema) == (True, False, False, "plain")


@needs_timescale
def test_timescale_engine_without_preload_is_refused_before_any_change(unloaded: PostgresServer) -> None:
    dsn = _fresh(unloaded, "ts_unloaded")
    with pytest.raises(ConfigurationError, match="shared_preload_libraries = 'timescaledb'"):
        migrate(dsn, engine="timescale")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
    done = _cli_migrate(dsn, DATABASE_ENGINE="timescale")
    assert done.returncode == 2
    assert "not preloaded" in done.stderr and "Traceback" not in done.stderr


@needs_timescale
def test_auto_refuses_to_fall_back_on_a_timescale_database(unloaded: PostgresServer) -> None:
    """A database made on TimescaleDB, its server restarted without the preload (a lost
    postgresql.conf line): migrating it plain would split its readings across two schemas."""
    dsn = _fresh(unloaded, "ts_then_unloaded")
    unloaded.timescale = True
    unloaded.restart()
    try:
        assert "011_readings_storage.timescale" in migrate(dsn)
    finally:
        unloaded.timescale = False
        unloaded.restart()
    with pytest.raises(ConfigurationError, match="holds the TimescaleDB schema") as refused:
        migrate(dsn)
    assert "shared_preload_libraries = 'timescaledb'" in str(refused.value)
    with pytest.raises(ConfigurationError, match="already holds the TimescaleDB schema"):
        migrate(dsn, engine="plain")
    done = _cli_migrate(dsn)
    assert done.returncode == 2 and "holds the TimescaleDB schema" in done.stderr


@needs_timescale
def test_a_plain_database_stays_plain_where_timescale_is_preloaded(
    database_on: Callable[[str], str],
) -> None:
    dsn = database_on("plain")
    assert migrate(dsn) == []
    with psycopg.connect(dsn) as conn:
        state = inspect(conn)
        assert conn.execute("SELECT to_regclass('readings_5m')").fetchone() == (None,)
    assert state.preloaded and not state.created and state.schema == "plain"
    with pytest.raises(ConfigurationError, match="created on plain PostgreSQL"):
        migrate(dsn, engine="timescale")


@needs_timescale
def test_plain_engine_on_a_timescale_database_is_refused(db_dsn: str, db_engine: str) -> None:
    assert db_engine == "timescale"
    with pytest.raises(ConfigurationError, match="already holds the TimescaleDB schema"):
        migrate(db_dsn, engine="plain")
    assert migrate(db_dsn, engine="timescale") == []


def test_without_timescale_every_engine_but_timescale_works(
    database_on: Callable[[str], str],
) -> None:
    """engine=plain migrates wherever PostgreSQL runs; the embedded cluster says which it has."""
    dsn = database_on("plain")
    assert migrate(dsn, engine="plain") == []
    with psycopg.connect(dsn) as conn:
        assert inspect(conn).schema == "plain"
