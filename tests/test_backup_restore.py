"""`coldchain backup` and `coldchain restore` on the embedded installation, as an operator runs
them: the archive holds the database, the keys and the evidence; a restore goes only into an empty
installation, refuses a changed archive, and ends with the audit trail verified against the heads
the backup recorded (EU GMP Annex 11 §7.2: restoring is checked, not assumed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from embedded.installation import Installation
from embedded.process import port_is_free
from tests.support.waiting import wait_until


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MQTT_URL")}
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", *argv],
        capture_output=True, text=True, timeout=300, check=False, env={**env, "ENVIRONMENT": "development"},
    )


@pytest.fixture
def installations(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two data folders: one to back up, one to restore into (clusters stopped at the end)."""
    made = (tmp_path / "site-a", tmp_path / "site-b")
    yield made
    for data in made:
        running = Installation(data).running_postgres()
        if running is not None:
            os.kill(running[0], signal.SIGINT)
            assert wait_until(lambda p=running[1]: port_is_free(p), timeout=60)


def _superuser(data: Path) -> str:
    done = _cli("db", "url", "--role", "superuser", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_backup_restores_into_an_empty_installation_whole_and_verified(
    installations: tuple[Path, Path], tmp_path: Path
) -> None:
    site_a, site_b = installations
    made = _cli("token", "create", "--name", "erp-1", "--role", "erp", "--data-dir", str(site_a))
    assert made.returncode == 0, made.stderr
    key_a = _cli("evidence", "public-key", "--data-dir", str(site_a)).stdout
    (site_a / "evidence" / "2026" / "11").mkdir(parents=True)
    (site_a / "evidence" / "2026" / "11" / "bundle.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    with psycopg.connect(_superuser(site_a), autocommit=True) as conn:
        conn.execute("INSERT INTO devices (org_id, id, kind, interval_s) VALUES (1, 'TRK-7', 'usb', 60)")
        conn.execute("SELECT audit_append(1::smallint, 'ops', 'note', 'device', 'TRK-7', NULL, NULL, 'x')")
        heads_a = conn.execute("SELECT org_id, hash FROM audit_heads ORDER BY 1").fetchall()

    archive = tmp_path / "nightly.tar"
    done = _cli("backup", str(archive), "--data-dir", str(site_a))
    assert done.returncode == 0, done.stderr
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert {"database.dump", "data/evidence-signing-key.pem", "data/evidence/2026/11/bundle.zip"} <= names
    assert not any(n.startswith("data/postgres/") for n in names)
    assert set(manifest["files"]) == names - {"manifest.json"}

    done = _cli("restore", str(archive), "--data-dir", str(site_b))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit trail intact" in done.stdout and "heads as recorded" in done.stdout
    with psycopg.connect(_superuser(site_b), autocommit=True) as conn:
        assert conn.execute("SELECT id FROM devices").fetchall() == [("TRK-7",)]
        assert conn.execute("SELECT org_id, hash FROM audit_heads ORDER BY 1").fetchall() == heads_a
        assert conn.execute("SELECT name FROM api_tokens").fetchall() == [("erp-1",)]
    assert _cli("evidence", "public-key", "--data-dir", str(site_b)).stdout == key_a  # same platform key
    assert (site_b / "evidence" / "2026" / "11" / "bundle.zip").read_bytes().startswith(b"PK")
    assert _cli("audit", "verify", "--data-dir", str(site_b)).returncode == 0

    again = _cli("restore", str(archive), "--data-dir", str(site_b))
    assert again.returncode != 0 and "restore into an empty one" in again.stderr


def test_a_changed_archive_is_refused_and_nothing_is_restored(
    installations: tuple[Path, Path], tmp_path: Path
) -> None:
    site_a, site_b = installations
    archive = tmp_path / "nightly.tar"
    assert _cli("backup", str(archive), "--data-dir", str(site_a)).returncode == 0
    raw = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        member = tar.getmember("database.dump")
    raw[member.offset_data + member.size // 2] ^= 0xFF  # one byte of the dump
    archive.write_bytes(bytes(raw))
    done = _cli("restore", str(archive), "--data-dir", str(site_b))
    assert done.returncode != 0
    assert "database.dump does not match its SHA-256" in done.stderr
    assert Installation(site_b).running_postgres() is None and not (site_b / "postgres").exists()
