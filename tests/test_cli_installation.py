"""Every `coldchain` command finds the installation as `coldchain up` does: DATABASE_URL when set,
otherwise the private cluster under --data-dir, started when it is not running. `db url` hands
out a URL psql can use; `token create` and `token revoke` work against either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from coldchain.access import Role
from coldchain.cli import main
from coldchain.errors import AuthError
from embedded.installation import Installation
from embedded.process import port_is_free
from storage import auth
from tests.support.waiting import wait_until


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """A command in this process (one that leaves no server running behind it)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip(), err


def _db_url(*argv: str) -> tuple[int, str, str]:
    """`coldchain db url` as its own process, as an operator runs it: it may leave the cluster running."""
    done = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "db", "url", *argv],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return done.returncode, done.stdout.strip(), done.stderr


@pytest.fixture
def installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installation]:
    """A fresh data folder; whatever cluster a test leaves running there is stopped at the end."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MQTT_URL", raising=False)
    found = Installation(tmp_path / "data")
    yield found
    running = found.running_postgres()
    if running is not None:
        pid, port = running
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        assert wait_until(lambda: port_is_free(port), timeout=60)


def test_db_url_starts_the_private_cluster_once_and_tokens_are_made_and_revoked_there(
    installation: Installation, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(installation.data_dir)
    assert installation.running_postgres_port() is None
    code, url, err = _db_url("--data-dir", data)
    assert code == 0 and "starting PostgreSQL" in err
    port = installation.running_postgres_port()
    assert port is not None and url.startswith("postgresql://postgres:")  # password authentication
    assert url.endswith(f"@127.0.0.1:{port}/coldchain")
    with psycopg.connect(url) as conn:  # migrated: the platform's tables are there
        assert conn.execute("SELECT count(*) FROM organizations").fetchone() == (1,)

    code, again, err = _db_url("--role", "superuser", "--data-dir", data)
    assert (code, again) == (0, url) and "starting" not in err  # found running, not started again

    code, token, _ = _cli(capsys, "token", "create", "--data-dir", data, "--name", "ops", "--role", "qa")
    assert code == 0 and token.startswith(auth.TOKEN_PREFIX)
    with psycopg.connect(url) as conn:
        assert auth.authenticate(conn, token).role is Role.QA
    assert _cli(capsys, "token", "revoke", "--data-dir", data, "--name", "ops")[:2] == (0, "revoked: ops")
    with psycopg.connect(url) as conn, pytest.raises(AuthError):
        auth.authenticate(conn, token)
    code, _, err = _cli(capsys, "token", "revoke", "--data-dir", data, "--name", "ops")
    assert code == 2 and "not found" in err
    assert installation.running_postgres_port() == port  # a command stops only what it started


def test_a_command_starts_a_stopped_cluster_and_stops_it_again(
    installation: Installation, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(installation.data_dir)
    code, token, err = _cli(capsys, "token", "create", "--data-dir", data, "--name", "ci", "--role", "erp")
    assert code == 0 and "starting PostgreSQL" in err
    assert installation.running_postgres_port() is None  # started for the command, stopped after it
    _, url, _ = _db_url("--data-dir", data)
    with psycopg.connect(url) as conn:  # the token was stored in the installation's database
        assert auth.authenticate(conn, token).name == "ci"


def test_database_url_wins_over_the_installation(
    db_dsn: str, db: psycopg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    data = str(tmp_path / "unused")
    assert _cli(capsys, "db", "url", "--data-dir", data)[:2] == (0, db_dsn)  # nothing started
    code, token, _ = _cli(capsys, "token", "create", "--data-dir", data, "--name", "erp", "--role", "erp")
    assert code == 0 and auth.authenticate(db, token).role is Role.ERP
    assert not (tmp_path / "unused").exists()  # no private server was started
