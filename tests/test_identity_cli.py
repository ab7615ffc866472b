"""The identity commands as an operator runs them, and `coldchain up`'s own protection: password
authentication with generated 0600 secrets, services as coldchain_app, the bootstrap key rotating."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from embedded.credentials import database_url
from embedded.process import free_port
from storage import auth
from tests.support.identity import PASSWORD
from tests.test_platform_up import _interrupt, _start, _wait_healthy


def _cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "COLDCHAIN_BOOTSTRAP_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", *args],
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_users_orgs_and_api_keys_from_the_command_line(db_dsn: str, db: psycopg.Connection) -> None:
    env = {"DATABASE_URL": db_dsn}
    done = _cli("orgs", "create", "hosp-b", "--name", "Hospital B", "--kind", "hospital", env=env)
    assert done.returncode == 0, done.stderr
    done = _cli(
        "users",
        "create",
        "--email",
        "qa@hosp.org",
        "--name",
        "Quinn QA",
        "--role",
        "qa",
        "--role",
        "viewer",
        "--organization",
        "hosp-b",
        "--password-stdin",
        env=env,
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    user = json.loads(done.stdout)
    assert (user["email"], user["roles"], user["organization"]) == ("qa@hosp.org", ["qa", "viewer"], "hosp-b")
    assert PASSWORD not in done.stdout + done.stderr
    weak = _cli(
        "users",
        "create",
        "--email",
        "w@hosp.org",
        "--name",
        "W",
        "--role",
        "qa",
        "--password-stdin",
        env=env,
        stdin="short\n",
    )
    assert weak.returncode == 2 and "at least 12" in weak.stderr

    done = _cli("api-keys", "create", "--name", "erp", "--role", "erp", "--expires-in-days", "30", env=env)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert auth.authenticate(db, created["key"]).name == "erp"
    listed = _cli("api-keys", "list", env=env)
    assert listed.returncode == 0 and created["key"] not in listed.stdout and '"name": "erp"' in listed.stdout
    assert _cli("api-keys", "revoke", str(created["id"]), env=env).returncode == 0
    with pytest.raises(Exception, match="revoked"):
        auth.authenticate(db, created["key"])
    assert _cli("api-keys", "revoke", str(created["id"]), env=env).returncode == 2


def _post_form(url: str, form: dict[str, str]) -> Any:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_up_uses_passwords_roles_and_a_rotating_bootstrap_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    http, mqtt = free_port(), free_port()
    first, second = auth.new_token(), auth.new_token()
    monkeypatch.delenv("ENVIRONMENT", raising=False)  # production: up makes its own SECRET_KEY
    monkeypatch.setenv("COLDCHAIN_BOOTSTRAP_TOKEN", first)
    proc = _start(data, http, mqtt)
    try:
        _wait_healthy(proc, http)
        secrets_dir = data / "secrets"
        assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
        for name in (
            "secret-key",
            "postgres-superuser.password",
            "postgres-owner.password",
            "postgres-app.password",
        ):
            assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600, name
        port = int((data / "postgres.port").read_text())
        # No trust: the superuser without its password is refused.
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/coldchain", connect_timeout=5)
        with psycopg.connect(database_url(data, "app"), autocommit=True) as app:
            assert app.execute("SELECT current_user").fetchone() == ("coldchain_app",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("DELETE FROM audit_trail")
        with psycopg.connect(database_url(data, "owner"), autocommit=True) as owner:
            row = owner.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_trail'").fetchone()
            assert row == ("coldchain_owner",)

        done = _cli(
            "users",
            "create",
            "--data-dir",
            str(data),
            "--email",
            "qa@x.org",
            "--name",
            "Quinn",
            "--role",
            "qa",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        assert done.returncode == 0, done.stderr
        tokens = _post_form(
            f"http://127.0.0.1:{http}/api/v1/auth/token", {"username": "qa@x.org", "password": PASSWORD}
        )
        assert _status(f"http://127.0.0.1:{http}/api/v1/devices", tokens["access_token"]) == 200
        assert _status(f"http://127.0.0.1:{http}/api/v1/devices", first) == 200
        verify = _cli("audit", "verify", "--data-dir", str(data))
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stderr
    finally:
        _interrupt(proc) if proc.poll() is None else None

    monkeypatch.setenv("COLDCHAIN_BOOTSTRAP_TOKEN", second)
    proc = _start(data, http, mqtt)
    try:
        _wait_healthy(proc, http)
        assert _status(f"http://127.0.0.1:{http}/api/v1/devices", second) == 200
        assert _status(f"http://127.0.0.1:{http}/api/v1/devices", first) == 401  # rotated out
    finally:
        _interrupt(proc) if proc.poll() is None else None
