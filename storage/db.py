"""Connections. The API serves requests from a pool (opened in its lifespan, or handed in by
`coldchain up`); every worker thread (an ingest writer, the rules runner, the notification
planner and worker) holds its own connections from `connect`, because a LISTEN or a long
transaction should not be held on a pooled one. Every connection has a connect timeout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

CONNECT_TIMEOUT_S = 10


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A single connection with a connect timeout (for migrations, tools and the ingest writer)."""
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)


def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 8, name: str = "coldchain") -> ConnectionPool:
    """An open pool; the caller closes it (use it as a context manager)."""
    pool = ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=30,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
        check=ConnectionPool.check_connection,
    )
    pool.open(wait=True, timeout=30)
    return pool


@contextmanager
def transaction(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A connection from the pool inside one transaction (committed on success)."""
    with pool.connection() as conn, conn.transaction():
        yield conn


def ensure_database(server_dsn: str, name: str) -> None:
    """Create database `name` on the server of `server_dsn` (a superuser's) unless it exists."""
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
