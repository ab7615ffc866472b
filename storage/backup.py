"""The platform's database in a backup: a pg_dump archive (custom format) and the facts that let a
restore prove it is whole; the restore into an empty database, TimescaleDB's way (the
extension's pre- and post-restore steps around pg_restore).

EU GMP Annex 11 §7.2 asks that backups be regular and that restoring them be checked; the
restore therefore ends with the audit trail verified against the heads recorded at backup time.
The tools run with the password in the environment (PGPASSWORD), never on their command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from coldchain.errors import ColdchainError


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What a backup records of the database it holds, and a restore compares."""

    server_version: str
    timescaledb: str | None
    migrations: list[str]
    audit_heads: dict[str, list[Any]]  # org id -> [last id, rows, hash hex] (ids may be null)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_version": self.server_version,
            "timescaledb": self.timescaledb,
            "migrations": self.migrations,
            "audit_heads": self.audit_heads,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DatabaseFacts:
        return cls(
            server_version=str(doc["server_version"]),
            timescaledb=doc.get("timescaledb"),
            migrations=[str(m) for m in doc.get("migrations", [])],
            audit_heads={str(k): list(v) for k, v in dict(doc.get("audit_heads", {})).items()},
        )


def facts(conn: psycopg.Connection) -> DatabaseFacts:
    version = conn.execute("SHOW server_version").fetchone()
    ts = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    migrations = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    heads = {
        str(r[0]): [r[1], r[2], bytes(r[3]).hex()]
        for r in conn.execute("SELECT org_id, last_id, rows, hash FROM audit_heads ORDER BY org_id")
    }
    return DatabaseFacts(
        server_version=str(version[0]) if version else "?",
        timescaledb=None if ts is None else str(ts[0]),
        migrations=migrations,
        audit_heads=heads,
    )


def holds_data(conn: psycopg.Connection) -> bool:
    """Whether the database already holds a platform (a restore goes only into an empty one)."""
    row = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ColdchainError(f"{name} is not installed (Debian: postgresql-client)")
    return found


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ}
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-5:]
        raise ColdchainError(f"{what} failed: " + " | ".join(detail))


def dump(url: str, archive: Path) -> None:
    """The whole database in pg_dump's custom format (compressed; pg_restore reads it)."""
    conninfo, env = _without_password(url)
    _run([_tool("pg_dump"), "--format=custom", f"--file={archive}", f"--dbname={conninfo}"], env, "pg_dump")


def restore(superuser_url: str, archive: Path, *, timescaledb: bool) -> None:
    """Load a dump into an empty database as a superuser, with TimescaleDB's restore mode on
    around it when the dump holds hypertables."""
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        if holds_data(conn):
            raise ColdchainError("the target database already holds a platform; restore into an empty one")
        if timescaledb:
            available = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
            if available is None:
                raise ColdchainError("the backup holds TimescaleDB hypertables; install TimescaleDB first")
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute("SELECT timescaledb_pre_restore()")
    conninfo, env = _without_password(superuser_url)
    try:
        argv = [_tool("pg_restore"), "--exit-on-error", f"--dbname={conninfo}", str(archive)]
        _run(argv, env, "pg_restore")
    finally:
        if timescaledb:
            with psycopg.connect(superuser_url, autocommit=True) as conn:
                conn.execute("SELECT timescaledb_post_restore()")
