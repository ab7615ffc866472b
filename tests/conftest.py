"""Fixtures: one private PostgreSQL and one private Mosquitto per test session, started on free
ports; every test gets its own database (cloned from a migrated template) and its own topic prefix.

Engines: the session cluster preloads TimescaleDB when it is installed, and every test's database
is then a Timescale one (as in production). The storage, ingest, rules, lot and evidence tests
(`ENGINE_MODULES`, or any test marked `both_engines`) run a second time on a database migrated
plain on the same cluster (`db_engine` = "plain"): a second template costs one plain migration,
about a third of what a second cluster costs to initdb and start. The background job scheduler
is off in the test templates, so a compression or refresh job never runs in the middle of a test;
the tests of the policies call the jobs themselves. COLDCHAIN_TEST_TIMESCALE=0 runs everything on
plain PostgreSQL even where TimescaleDB is installed.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from coldchain.wire import Topics
from embedded import MosquittoServer, PostgresServer
from embedded.postgres import find_bindir, timescaledb_installed
from storage.migrate import migrate

# identity: services refuse to start without SECRET_KEY outside explicit development mode; tests
# that build Settings() without one run in development mode (a random key per process).
os.environ.setdefault("ENVIRONMENT", "development")

TEMPLATE_DB = "coldchain_template"
ENGINE_MODULES = ("test_storage", "test_ingest", "test_rules", "test_lot", "test_evidence")
_db_counter = itertools.count()


def timescale_wanted() -> bool:
    """The session runs on TimescaleDB: installed here, and not switched off for this run."""
    if os.environ.get("COLDCHAIN_TEST_TIMESCALE", "1").lower() in ("0", "false", "no", "off"):
        return False
    return timescaledb_installed(find_bindir())


def default_engine() -> str:
    return "timescale" if timescale_wanted() else "plain"


def _template_name(engine: str) -> str:
    return TEMPLATE_DB if engine == default_engine() else f"{TEMPLATE_DB}_{engine}"


_templates_made: set[tuple[int, str]] = set()


def _make_template(server: PostgresServer, engine: str) -> str:
    """The migrated template for `engine` on this cluster, made on first use."""
    name = _template_name(engine)
    if (server.port, name) in _templates_made:
        return name
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            _templates_made.add((server.port, name))
            return name
        conn.execute(f"CREATE DATABASE {name}")
    migrate(server.dsn_for(name), engine="timescale" if engine == "timescale" else "plain")
    if engine == "timescale":
        with psycopg.connect(server.dsn_for(name), autocommit=True) as conn:
            conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
                         " WHERE job_id >= 1000")
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        # no connections: TimescaleDB's launcher would keep a scheduler in it, and a template in
        # use cannot be cloned
        conn.execute(f"ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
        for _ in range(100):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone():
                break
            time.sleep(0.05)
    _templates_made.add((server.port, name))
    return name


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A private cluster for the whole session (fsync off: a crash of the OS is not under test);
    TimescaleDB preloaded when installed."""
    server = PostgresServer(fast_and_unsafe=True, timescale=timescale_wanted())
    server.start()
    _make_template(server, default_engine())
    yield server
    server.destroy()


@pytest.fixture
def db_engine(request: pytest.FixtureRequest) -> str:
    """The engine of this test's database: "timescale" or "plain" (parametrised where both run)."""
    return str(getattr(request, "param", default_engine()))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the engine-sensitive tests on both engines when TimescaleDB is here."""
    if "db_engine" not in metafunc.fixturenames or not timescale_wanted():
        return
    markers = metafunc.definition.iter_markers("parametrize")
    if any("db_engine" in str(m.args[0]) for m in markers):
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module.startswith(ENGINE_MODULES) or metafunc.definition.get_closest_marker("both_engines"):
        metafunc.parametrize("db_engine", ["timescale", "plain"], indirect=True)


@pytest.fixture(scope="session")
def mqtt_server() -> Iterator[MosquittoServer]:
    server = MosquittoServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def db_dsn(pg_server: PostgresServer, db_engine: str) -> Iterator[str]:
    """A fresh, migrated database for this test only (on `db_engine`); dropped afterwards."""
    template = _make_template(pg_server, db_engine)
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    yield pg_server.dsn_for(name)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_on(pg_server: PostgresServer) -> Iterator[Callable[[str], str]]:
    """Make more migrated databases on a given engine within one test: `database_on("plain")`."""
    made: list[str] = []

    def make(engine: str) -> str:
        template = _make_template(pg_server, engine)
        name = f"t_{os.getpid()}_{next(_db_counter)}"
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        made.append(name)
        return pg_server.dsn_for(name)

    yield make
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db(db_dsn: str) -> Iterator[psycopg.Connection]:
    """A connection to this test's database (autocommit; use conn.transaction() where needed)."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def topics() -> Topics:
    """A topic prefix of this test's own on the shared broker."""
    return Topics(prefix=f"test-{uuid.uuid4().hex[:10]}/")


@pytest.fixture
def mqtt_url(mqtt_server: MosquittoServer) -> str:
    return mqtt_server.url


@pytest.fixture
def private_mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A broker of this test's own, for tests that restart or reconfigure it."""
    server = MosquittoServer()
    server.start()
    yield server
    server.destroy()


def pytest_configure(config: pytest.Config) -> None:
    # Keep hypothesis deterministic and bounded in CI; examples stay in memory only.
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("ci")
    config.addinivalue_line(
        "markers", "both_engines: run on TimescaleDB and on plain PostgreSQL when TimescaleDB is installed"
    )


__all__ = ["Path"]
