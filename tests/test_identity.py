"""People and machines against a real PostgreSQL over real HTTP: users, the OAuth2 password flow,
token expiry, refresh rotation, lockout, API keys, the bootstrap key's rotation."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from api import identity
from api.app import create_app
from coldchain import access_tokens
from coldchain.access import Role
from coldchain.errors import ConfigurationError
from coldchain.settings import Settings, load_settings
from storage import api_keys, audit, auth
from storage.db import open_pool
from tests.support.identity import PASSWORD, bearer, login, make_user

SETTINGS = {"lockout_failures": 3, "lockout_window_s": 600, "lockout_duration_s": 2}


@pytest.fixture
def settings(db_dsn: str) -> Settings:
    return Settings(database_url=db_dsn, **SETTINGS)  # type: ignore[arg-type]


@pytest.fixture
def client(settings: Settings, db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=4) as pool, TestClient(create_app(settings, pool=pool)) as c:
        yield c


@pytest.fixture
def admin(db: psycopg.Connection) -> dict[str, str]:
    return {"Authorization": "Bearer " + auth.create_token(db, org=1, name="ops", role=Role.ADMIN, actor="t")}


def _actions(db: psycopg.Connection, email: str) -> list[str]:
    return [e["action"] for e in audit.trail(db, 1, "user", email)]


def test_admin_creates_a_user_who_signs_in_and_sees_who_they_are(
    client: TestClient, admin: dict[str, str], db: psycopg.Connection
) -> None:
    body = {
        "email": "Ann.QA@Example.com",
        "name": "Ann Example",
        "roles": ["qa", "viewer"],
        "password": PASSWORD,
    }
    res = client.post("/api/v1/users", json=body, headers=admin)
    assert res.status_code == 201, res.text
    user = res.json()
    assert (user["email"], user["name"], user["roles"]) == (
        "Ann.QA@example.com",
        "Ann Example",
        ["qa", "viewer"],
    )
    assert not any("password" in field for field in user)
    stored = db.execute("SELECT password_hash FROM users WHERE id = %s", (user["id"],)).fetchone()
    assert stored is not None and stored[0].startswith("$argon2id$") and PASSWORD not in stored[0]
    # The same e-mail (any case) is one person.
    assert (
        client.post("/api/v1/users", json={**body, "email": "ann.qa@EXAMPLE.com"}, headers=admin).status_code
        == 409
    )

    tokens = login(client, "ann.qa@example.com")
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    assert tokens["refresh_token"].startswith("ccr_")
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert (me["kind"], me["printed_name"], me["roles"]) == ("user", "Ann Example", ["qa", "viewer"])
    assert [u["email"] for u in client.get("/api/v1/users", headers=admin).json()] == ["Ann.QA@example.com"]
    assert _actions(db, "Ann.QA@example.com") == ["create", "login"]


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short1", "at least 12"),
        ("aaaaaaaaaaaaaaaa", "too easy"),
        ("password1234", "too easy"),
        ("bob@x.org", "12"),
    ],
)
def test_the_password_policy_refuses_weak_passwords(
    client: TestClient, admin: dict[str, str], password: str, why: str
) -> None:
    body = {"email": "bob@x.org", "name": "Bob", "roles": ["viewer"], "password": password}
    res = client.post("/api/v1/users", json=body, headers=admin)
    assert res.status_code == 422 and why in res.json()["message"] and res.json()["field"] == "password"


def test_unknown_roles_and_non_admins_are_refused(
    client: TestClient, admin: dict[str, str], db: psycopg.Connection
) -> None:
    body = {"email": "c@x.org", "name": "C", "roles": ["superuser"], "password": PASSWORD}
    res = client.post("/api/v1/users", json=body, headers=admin)
    assert res.status_code == 422 and res.json()["field"].startswith("roles")  # the enum refuses it
    make_user(db, "qa@x.org", ["qa"])
    res = client.post("/api/v1/users", json={**body, "roles": ["qa"]}, headers=bearer(client, "qa@x.org"))
    assert res.status_code == 403


def test_wrong_passwords_lock_the_account_and_every_attempt_is_audited(
    client: TestClient, admin: dict[str, str], db: psycopg.Connection
) -> None:
    user = make_user(db, "dan@x.org", ["driver"])
    for _ in range(SETTINGS["lockout_failures"]):
        res = client.post(
            "/api/v1/auth/token", data={"username": "dan@x.org", "password": "wrong password!!"}
        )
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer"
    # Locked: even the right password is refused until the lock ends.
    res = client.post("/api/v1/auth/token", data={"username": "dan@x.org", "password": PASSWORD})
    assert res.status_code == 401 and "locked" in res.json()["message"]
    actions = _actions(db, "dan@x.org")
    assert actions == ["create", "login_failed", "login_failed", "login_failed", "lockout", "login_failed"]
    [lock] = [e for e in audit.trail(db, 1, "user", "dan@x.org") if e["action"] == "lockout"]
    assert lock["reason"] == "3 failed attempts within 600 s" and lock["new"]["locked_until"]
    assert client.get(f"/api/v1/users/{user.id}", headers=admin).json()["locked_until"] is not None
    # The lock lasts lockout_duration_s (2 s here), then the right password works again.
    time.sleep(SETTINGS["lockout_duration_s"] + 0.2)
    assert login(client, "dan@x.org")["access_token"]
    # A fresh count after the lock: one failure does not lock again.
    client.post("/api/v1/auth/token", data={"username": "dan@x.org", "password": "wrong password!!"})
    assert login(client, "dan@x.org")["access_token"]


def test_an_admin_unlocks_and_an_unknown_email_is_answered_like_a_wrong_password(
    client: TestClient, admin: dict[str, str], db: psycopg.Connection
) -> None:
    user = make_user(db, "eve@x.org", ["viewer"])
    for _ in range(3):
        client.post("/api/v1/auth/token", data={"username": "eve@x.org", "password": "not my password"})
    assert (
        "locked"
        in client.post("/api/v1/auth/token", data={"username": "eve@x.org", "password": PASSWORD}).text
    )
    res = client.patch(f"/api/v1/users/{user.id}", json={"unlock": True}, headers=admin)
    assert res.status_code == 200 and res.json()["locked_until"] is None
    assert login(client, "eve@x.org")["access_token"]
    unknown = client.post("/api/v1/auth/token", data={"username": "nobody@x.org", "password": PASSWORD})
    wrong = client.post("/api/v1/auth/token", data={"username": "eve@x.org", "password": "not my password"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json()["message"] == wrong.json()["message"] == "wrong e-mail or password"
    assert [e["reason"] for e in audit.trail(db, 1, "user", "nobody@x.org")] == ["unknown e-mail"]


def test_access_tokens_expire_and_refresh_tokens_rotate(
    client: TestClient, settings: Settings, db: psycopg.Connection
) -> None:
    user = make_user(db, "fay@x.org", ["logistics"])
    expired, _ = access_tokens.issue(
        identity.token_key(settings), user_id=user.id, org_id=1, ttl_s=900, now=time.time() - 901
    )
    res = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {expired}"})
    assert res.status_code == 401 and "expired" in res.json()["message"]
    forged, _ = access_tokens.issue(b"k" * 32, user_id=user.id, org_id=1, ttl_s=900)
    assert client.get("/api/v1/devices", headers={"Authorization": f"Bearer {forged}"}).status_code == 401

    first = login(client, "fay@x.org")
    res = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert res.status_code == 200, res.text
    second = res.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (
        client.get(
            "/api/v1/devices", headers={"Authorization": f"Bearer {second['access_token']}"}
        ).status_code
        == 200
    )
    # The retired token used again: refused, and its whole family (the newer token too) is revoked.
    replay = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and "already used" in replay.json()["message"]
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code
        == 401
    )
    assert "refresh_reuse" in _actions(db, "fay@x.org")
    stored = db.execute("SELECT token_hash FROM refresh_tokens").fetchall()
    assert all(first["refresh_token"].encode() not in bytes(r[0]) for r in stored)
    # Logging out revokes a chain.
    third = login(client, "fay@x.org")
    assert (
        client.post("/api/v1/auth/logout", json={"refresh_token": third["refresh_token"]}).status_code == 204
    )
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": third["refresh_token"]}).status_code == 401
    )


def test_disabling_a_user_or_changing_roles_ends_their_sessions_at_once(
    client: TestClient, admin: dict[str, str], db: psycopg.Connection
) -> None:
    user = make_user(db, "gus@x.org", ["logistics"])
    h = bearer(client, "gus@x.org")
    assert client.post("/api/v1/devices", json={"id": "G1"}, headers=h).status_code == 201
    res = client.patch(f"/api/v1/users/{user.id}", json={"roles": ["viewer"]}, headers=admin)
    assert res.status_code == 200 and res.json()["roles"] == ["viewer"]
    assert client.get("/api/v1/devices", headers=h).status_code == 401  # the old session ended
    h = bearer(client, "gus@x.org")
    assert client.post("/api/v1/devices", json={"id": "G2"}, headers=h).status_code == 403  # now a viewer
    client.patch(f"/api/v1/users/{user.id}", json={"disabled": True}, headers=admin)
    assert client.get("/api/v1/devices", headers=h).status_code == 401
    assert (
        client.post("/api/v1/auth/token", data={"username": "gus@x.org", "password": PASSWORD}).status_code
        == 401
    )
    [change, *_] = [e for e in audit.trail(db, 1, "user", "gus@x.org") if e["action"] == "update"]
    assert change["old"] == {"roles": ["logistics"]} and change["new"] == {"roles": ["viewer"]}


def test_a_person_changes_their_own_password_and_other_sessions_end(
    client: TestClient, db: psycopg.Connection
) -> None:
    make_user(db, "pat@x.org", ["viewer"])
    old = bearer(client, "pat@x.org")
    refresh = login(client, "pat@x.org")["refresh_token"]
    new = "another long passphrase 7"
    wrong = client.post(
        "/api/v1/users/me/password",
        json={"current_password": "not it at all", "new_password": new},
        headers=old,
    )
    assert wrong.status_code == 401
    res = client.post(
        "/api/v1/users/me/password", json={"current_password": PASSWORD, "new_password": new}, headers=old
    )
    assert res.status_code == 204, res.text
    assert client.get("/api/v1/devices", headers=old).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": refresh}).status_code == 401
    assert login(client, "pat@x.org", new)["access_token"]
    assert (
        client.post("/api/v1/auth/token", data={"username": "pat@x.org", "password": PASSWORD}).status_code
        == 401
    )
    assert "logout" not in _actions(db, "pat@x.org") and "update" in _actions(db, "pat@x.org")


def test_nobody_changes_their_own_roles(client: TestClient, db: psycopg.Connection) -> None:
    boss = make_user(db, "boss@x.org", ["admin"])
    res = client.patch(
        f"/api/v1/users/{boss.id}", json={"roles": ["admin", "qa"]}, headers=bearer(client, "boss@x.org")
    )
    assert res.status_code == 403 and "own roles" in res.json()["message"]


def test_api_keys_have_a_role_an_expiry_and_a_last_use_and_can_be_revoked(
    client: TestClient, admin: dict[str, str], db: psycopg.Connection
) -> None:
    res = client.post(
        "/api/v1/api-keys", json={"name": "erp-sync", "role": "erp", "expires_in_days": 30}, headers=admin
    )
    assert res.status_code == 201, res.text
    created = res.json()
    key = created["key"]
    assert key.startswith("cc_") and created["role"] == "erp" and created["expires_at"]
    listed = client.get("/api/v1/api-keys", headers=admin).json()
    assert all("key" not in k for k in listed) and key not in str(listed)
    h = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/devices", headers=h).status_code == 200
    [row] = [k for k in client.get("/api/v1/api-keys", headers=admin).json() if k["id"] == created["id"]]
    assert row["last_used_at"] is not None
    assert client.post("/api/v1/api-keys", json={"name": "x", "role": "erp"}, headers=h).status_code == 403
    assert client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/devices", headers=h).status_code == 401
    assert client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin).status_code == 404
    # An expired key stops working (expiry moved into the past as the database owner would see it).
    other = client.post("/api/v1/api-keys", json={"name": "old", "role": "viewer"}, headers=admin).json()
    db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 s' WHERE id = %s", (other["id"],))
    res = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {other['key']}"})
    assert res.status_code == 401 and "expired" in res.json()["message"]
    assert [e["action"] for e in audit.trail(db, 1, "api_key", str(created["id"]))] == ["create", "revoke"]


def test_the_bootstrap_key_rotates_when_its_variable_changes(
    client: TestClient, db: psycopg.Connection
) -> None:
    first, second = auth.new_token(), auth.new_token()
    assert api_keys.ensure_bootstrap(db, org=1, token=first)
    assert not api_keys.ensure_bootstrap(db, org=1, token=first)  # a restart with the same value
    assert client.get("/api/v1/devices", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    assert api_keys.ensure_bootstrap(db, org=1, token=second)
    assert client.get("/api/v1/devices", headers={"Authorization": f"Bearer {first}"}).status_code == 401
    assert client.get("/api/v1/devices", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    rows = [e for e in audit.search(db, org_id=1, entity="api_key") if e["action"] == "rotate"]
    assert len(rows) == 1 and rows[0]["reason"] == "COLDCHAIN_BOOTSTRAP_TOKEN changed"


def test_totp_second_factor(client: TestClient, db: psycopg.Connection) -> None:
    import pyotp

    make_user(db, "tom@x.org", ["qa"])
    h = bearer(client, "tom@x.org")
    res = client.post("/api/v1/users/me/totp", json={"password": PASSWORD}, headers=h)
    assert res.status_code == 200 and res.json()["provisioning_uri"].startswith("otpauth://totp/")
    secret = res.json()["secret"]
    assert (
        client.post("/api/v1/auth/token", data={"username": "tom@x.org", "password": PASSWORD}).status_code
        == 401
    )
    wrong = client.post(
        "/api/v1/auth/token", data={"username": "tom@x.org", "password": PASSWORD, "totp": "000000"}
    )
    assert wrong.status_code == 401
    code = pyotp.TOTP(secret).now()
    ok = client.post("/api/v1/auth/token", data={"username": "tom@x.org", "password": PASSWORD, "totp": code})
    assert ok.status_code == 200, ok.text


def test_no_public_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    production = load_settings(database_url="postgresql://x/y")
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        production.require_secret_key()
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        create_app(production)
    with pytest.raises(ConfigurationError, match="32"):
        load_settings(secret_key="too-short-to-be-a-key")
    one = load_settings(environment="development").require_secret_key()
    assert len(one) >= 32 and one == load_settings(environment="development").require_secret_key()


def test_security_headers_and_docs_switch(db_dsn: str, client: TestClient) -> None:
    res = client.get("/api/v1/health")
    assert res.headers["x-content-type-options"] == "nosniff" and res.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in res.headers["content-security-policy"]
    assert res.headers["cache-control"] == "no-store"
    assert client.get("/docs").status_code == 200
    with open_pool(db_dsn, max_size=1) as pool:
        hidden = TestClient(create_app(Settings(database_url=db_dsn, docs_enabled=False), pool=pool))
        assert hidden.get("/docs").status_code == 404 and hidden.get("/openapi.json").status_code == 404
