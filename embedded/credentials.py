"""The embedded cluster's database roles and their generated passwords, kept under the data folder.

Three roles, as an operator sees them (`database_url(data_dir, role)` prints each URL):
- `superuser` (postgres): cluster administration only; nothing runs as it day to day;
- `owner` (coldchain_owner): owns the database and runs migrations;
- `app` (coldchain_app): what the services connect as; it may append to the audit trail only
  through audit_append() and may not UPDATE, DELETE or TRUNCATE history (storage/roles.py).

Passwords are 256-bit random strings in `<data>/secrets/` (folder 0700, files 0600); the cluster
authenticates with scram-sha-256 instead of `trust`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DbRole = Literal["superuser", "owner", "app"]
ROLE_NAMES: dict[str, str] = {"superuser": "postgres", "owner": "coldchain_owner", "app": "coldchain_app"}
DATABASE = "coldchain"
_HBA = (
    "# written by coldchain: password authentication only (scram-sha-256), loopback only\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


@dataclass(frozen=True, slots=True)
class ClusterCredentials:
    data_dir: Path
    passwords: dict[str, str]
    port: int | None = None
    host: str = "127.0.0.1"

    @staticmethod
    def secrets_dir(data_dir: Path) -> Path:
        return data_dir / "secrets"

    @classmethod
    def ensure(cls, data_dir: Path) -> ClusterCredentials:
        """Load the passwords, generating any that are missing (first start)."""
        folder = cls.secrets_dir(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        for role in ROLE_NAMES:
            path = folder / f"postgres-{role}.password"
            if not path.exists():
                _write_secret(path, secrets.token_urlsafe(32))
        return cls.load(data_dir)

    @classmethod
    def load(cls, data_dir: Path) -> ClusterCredentials:
        from embedded.process import ServerError

        folder = cls.secrets_dir(data_dir)
        passwords: dict[str, str] = {}
        for role in ROLE_NAMES:
            path = folder / f"postgres-{role}.password"
            if not path.exists():
                raise ServerError(f"{path} is missing: start the platform once with `coldchain up`")
            passwords[role] = path.read_text().strip()
        port_file = data_dir / "postgres.port"
        port = int(port_file.read_text().strip()) if port_file.exists() else None
        return cls(data_dir=data_dir, passwords=passwords, port=port)

    def with_port(self, port: int) -> ClusterCredentials:
        (self.data_dir / "postgres.port").write_text(f"{port}\n")
        return ClusterCredentials(self.data_dir, self.passwords, port, self.host)

    def url(self, role: str, dbname: str | None = None) -> str:
        from embedded.process import ServerError

        if role not in ROLE_NAMES:
            raise ServerError(f"unknown database role {role!r} (superuser, owner or app)")
        if self.port is None:
            raise ServerError("the embedded cluster's port is unknown: start it with `coldchain up`")
        db = dbname or (DATABASE if role != "superuser" else "postgres")
        return f"postgresql://{ROLE_NAMES[role]}:{self.passwords[role]}@{self.host}:{self.port}/{db}"


def broker_passwords(data_dir: Path, accounts: tuple[str, ...]) -> dict[str, str]:
    """The private broker's service-account passwords (`<data>/secrets/mqtt-<account>.password`,
    0600), made on first use like the database's."""
    folder = ClusterCredentials.secrets_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    passwords: dict[str, str] = {}
    for account in accounts:
        path = folder / f"mqtt-{account}.password"
        if not path.exists():
            _write_secret(path, secrets.token_urlsafe(32))
        passwords[account] = path.read_text().strip()
    return passwords


def database_url(data_dir: Path, role: str) -> str:
    """The URL of one role of the embedded install in `data_dir` (for `coldchain db url --role`)."""
    return ClusterCredentials.load(data_dir).url(role)


def secure_cluster(superuser_dsn: str, hba_file: Path, creds: ClusterCredentials) -> None:
    """Give every role its password, make the owner own the database and its objects, and switch
    the cluster from `trust` to scram-sha-256. Safe to run at every start."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(superuser_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(
            sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(creds.passwords["superuser"]))
        )
        for role in ("owner", "app"):
            name = ROLE_NAMES[role]
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(creds.passwords[role])
                )
            )
        owner = sql.Identifier(ROLE_NAMES["owner"])
        # Migrations look at shared_preload_libraries to choose the TimescaleDB branch.
        conn.execute(sql.SQL("GRANT pg_read_all_settings TO {}").format(owner))
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), owner))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(DATABASE), owner))
    db_dsn = superuser_dsn.rsplit("/", 1)[0] + "/" + DATABASE
    with psycopg.connect(db_dsn, autocommit=True, connect_timeout=10) as conn:
        # Extensions need the superuser; migrations then find them present.
        conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        preloaded = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb' AND 'timescaledb' = ANY"
            " (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
        ).fetchone()
        if preloaded:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        owner_name = ROLE_NAMES["owner"]
        # An install from before the roles existed: its objects move to the owner.
        objects = conn.execute(
            "SELECT format('ALTER %%s %%s OWNER TO %%I', kind, name, %s::text) FROM ("
            " SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'"
            "   WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind, c.oid::regclass::text AS name"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')"
            "   AND pg_get_userbyid(c.relowner) <> %s::text"
            "   AND NOT EXISTS (SELECT 1 FROM pg_depend d"
            "     WHERE d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))"
            " UNION ALL"
            " SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> %s::text"
            "   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')) o",
            (owner_name, owner_name, owner_name),
        ).fetchall()
        for (statement,) in objects:
            conn.execute(statement)
    text = hba_file.read_text() if hba_file.exists() else ""
    if text != _HBA:
        hba_file.write_text(_HBA)
        with psycopg.connect(superuser_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_reload_conf()")
