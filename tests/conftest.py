"""Fixtures: one private PostgreSQL and one private Mosquitto per test session, started on free
ports; every test gets its own database (cloned from a migrated template) and its own topic prefix."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from coldchain.wire import Topics
from embedded import MosquittoServer, PostgresServer
from storage.migrate import migrate

# identity: services refuse to start without SECRET_KEY outside explicit development mode; tests
# that build Settings() without one run in development mode (a random key per process).
os.environ.setdefault("ENVIRONMENT", "development")

TEMPLATE_DB = "coldchain_template"
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A private cluster for the whole session (fsync off: a crash of the OS is not under test)."""
    server = PostgresServer(fast_and_unsafe=True)
    server.start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    migrate(server.dsn_for(TEMPLATE_DB))
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def mqtt_server() -> Iterator[MosquittoServer]:
    server = MosquittoServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def db_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database for this test only; dropped afterwards."""
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield pg_server.dsn_for(name)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
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


__all__ = ["Path"]
