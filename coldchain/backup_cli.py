"""`coldchain backup FILE` and `coldchain restore FILE`: part of the composition root (cli.py),
which mounts them; they join the installation (embedded/), the database (storage/) and the audit
check. A restore goes into an empty installation only, and ends by proving what it restored: the
audit trail verified, link by link, against the heads the backup recorded."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coldchain import __version__
from coldchain.errors import ColdchainError

__all__ = ["add_parsers", "backup", "restore"]


def add_parsers(sub: Any, common: Any) -> None:
    made = sub.add_parser("backup", help="the database, keys and evidence files in one archive")
    common(made)
    made.add_argument("file", type=Path, help="the archive to write (a tar file, mode 0600)")
    back = sub.add_parser("restore", help="an archive into an empty installation, then verified")
    common(back)
    back.add_argument("file", type=Path, help="an archive written by `coldchain backup`")


def _superuser_url(servers: Any, settings: Any) -> str:
    return servers.role_url("superuser") if servers.embedded_database else str(settings.database_url)


def backup(args: argparse.Namespace, servers: Any, settings: Any) -> int:
    import psycopg

    from embedded import backup as archive
    from storage import backup as store

    servers.database_url()  # the embedded cluster started, secured and migrated
    url = _superuser_url(servers, settings)
    with psycopg.connect(url, autocommit=True) as conn:
        facts = store.facts(conn)
    target = args.file.resolve()
    with tempfile.TemporaryDirectory(prefix="coldchain-backup-") as tmp:
        dump = Path(tmp) / archive.DATABASE_MEMBER
        store.dump(url, dump)
        members = [(archive.DATABASE_MEMBER, dump), *archive.data_files(settings.data_dir.resolve())]
        doc = archive.write(
            target,
            members,
            {
                "created_at": datetime.now(UTC).isoformat(),
                "platform_version": __version__,
                "database": facts.to_dict(),
            },
        )
    size = target.stat().st_size
    print(f"backup written: {target} ({size:,} bytes, {len(doc['files'])} files,"
          f" {len(facts.migrations)} migrations, TimescaleDB {facts.timescaledb or 'no'})")
    print("it holds the platform's signing key and secrets: keep it as safe as the data folder")
    return 0


def restore(args: argparse.Namespace, servers: Any, settings: Any) -> int:
    import psycopg

    from embedded import backup as archive
    from storage import audit
    from storage import backup as store
    from storage.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="coldchain-restore-") as tmp:
        unpacked = Path(tmp)
        try:
            doc = archive.read(args.file.resolve(), unpacked)
        except archive.BackupError as exc:
            raise ColdchainError(str(exc)) from None
        recorded = store.DatabaseFacts.from_dict(doc["database"])
        superuser = servers.empty_database_url() if servers.embedded_database else str(settings.database_url)
        with psycopg.connect(superuser, autocommit=True) as conn:
            if store.holds_data(conn):
                raise ColdchainError("the installation already holds a platform; restore into an empty one")
        _restore_files(unpacked / "data", settings.data_dir.resolve())
        hypertables = recorded.timescaledb is not None
        store.restore(superuser, unpacked / archive.DATABASE_MEMBER, timescaledb=hypertables)
    owner = servers.database_url()
    migrate(owner, engine=settings.database_engine)  # newer migrations, grants, released presets
    with psycopg.connect(owner, autocommit=True) as conn:
        verdict = audit.verify_trail(conn)
        now = store.facts(conn)
    heads_match = all(now.audit_heads.get(org) == head for org, head in recorded.audit_heads.items())
    print(f"restored {args.file}: {len(recorded.migrations)} migrations from the backup,"
          f" audit trail {'intact' if verdict.intact else 'BROKEN'} ({verdict.rows} rows),"
          f" heads {'as recorded' if heads_match else 'DIFFERENT from the backup'}")
    if not verdict.intact:
        print(f"coldchain: audit trail broken at row {verdict.row_id}: {verdict.reason}", file=sys.stderr)
    return 0 if verdict.intact and heads_match else 1


def _restore_files(source: Path, data_dir: Path) -> None:
    """The backup's data-folder files into `data_dir`: keys, secrets and evidence bundles. The
    database passwords an installation already made for its own cluster stay its own."""
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(source)
        target = data_dir / relative
        if relative.parts[0] == "secrets" and relative.name.startswith("postgres-") and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative.parts[0] == "secrets":
            target.parent.chmod(0o700)
        shutil.copy2(path, target)
        target.chmod(0o600)
