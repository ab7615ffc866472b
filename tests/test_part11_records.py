"""21 CFR Part 11 records against a real PostgreSQL: e-signatures (refused for keys and wrong
passwords, shown broken after an edit), the application role that cannot rewrite history, and
`coldchain audit verify` catching an altered row and removed newest rows."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.access_tokens import derive_key
from coldchain.domain import Device, Severity
from coldchain.errors import ConflictError
from coldchain.esignature import record_hash
from coldchain.settings import Settings
from evidence import signing
from storage import alerts, audit, auth, registry
from storage.db import open_pool
from tests.support.identity import PASSWORD, bearer, make_user, signature


def _app_dsn(db_dsn: str, db: psycopg.Connection) -> str:
    """The same database as the services' own role (trust auth in the test cluster)."""
    db.execute("ALTER ROLE coldchain_app LOGIN")
    return db_dsn.replace("postgres@", "coldchain_app@", 1)


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection) -> Iterator[TestClient]:
    """The API as the services run it: connected as coldchain_app, not as the superuser."""
    with (
        open_pool(_app_dsn(db_dsn, db), max_size=4) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as c,
    ):
        yield c


def _resolved_alert(db: psycopg.Connection, key: str = "k1") -> int:
    with contextlib.suppress(ConflictError):  # registered by an earlier call of this test
        registry.create_device(db, org=1, device=Device(id="D1"), actor="t")
    with db.transaction():
        alert_id, _ = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key=key,
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C for 30 min",
                started_at=datetime.now(UTC),
            ),
        )
    alerts.transition(db, org=1, alert_id=alert_id, action="resolve", actor="ops", comment="door closed")
    return alert_id


def _close(client: TestClient, alert_id: int, headers: dict[str, str], **sig: str) -> object:
    body = {
        "disposition": "release",
        "comment": "MKT 6.1 °C, within the label",
        "signature": signature(**sig),
    }
    return client.post(f"/api/v1/alerts/{alert_id}/close", json=body, headers=headers)


def test_a_signed_close_shows_name_time_meaning_and_hash_and_breaks_when_the_record_changes(
    client: TestClient, db: psycopg.Connection
) -> None:
    alert_id = _resolved_alert(db)
    make_user(db, "ann@x.org", ["qa"], name="Ann Example")
    qa = bearer(client, "ann@x.org")
    res = _close(client, alert_id, qa, meaning="release")
    assert res.status_code == 200, res.text  # type: ignore[attr-defined]
    [sig] = res.json()["signatures"]  # type: ignore[attr-defined]
    assert (sig["signer"], sig["user"], sig["meaning"], sig["status"]) == (
        "Ann Example",
        "ann@x.org",
        "release",
        "valid",
    )
    assert sig["record_hash"].startswith("sha256:") and len(sig["record_hash"]) == 71
    signed_at = datetime.fromisoformat(sig["signed_at"])
    assert signed_at.utcoffset() is not None and signed_at.utcoffset().total_seconds() == 0
    shown = client.get(f"/api/v1/alerts/{alert_id}", headers=qa).json()
    assert shown["signatures"] == [sig]
    [listed] = client.get("/api/v1/alerts?state=closed", headers=qa).json()
    assert [(x["signer"], x["record_hash"]) for x in listed["signatures"]] == [
        ("Ann Example", sig["record_hash"])
    ]

    # An edit behind the application's back (as the superuser) shows: the signature is broken.
    db.execute("UPDATE alerts SET disposition = 'reject' WHERE id = %s", (alert_id,))
    [broken] = client.get(f"/api/v1/alerts/{alert_id}", headers=qa).json()["signatures"]
    assert broken["status"] == "broken" and "changed" in broken["reason"]
    # The signature row itself cannot be edited or moved to another record, not even by the superuser.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("UPDATE signatures SET entity_key = '999'")
    # The audit trail has the signature with its manifestation.
    [entry] = [e for e in audit.trail(db, 1, "alert", str(alert_id)) if e["action"] == "sign"]
    assert entry["new"]["record_hash"] == sig["record_hash"] and "Ann Example" in entry["reason"]


def test_keys_cannot_sign_and_wrong_passwords_are_refused_without_changing_anything(
    client: TestClient, db: psycopg.Connection
) -> None:
    alert_id = _resolved_alert(db)
    key = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="qa-bot", role=Role.QA, actor="t")}
    res = _close(client, alert_id, key)
    assert res.status_code == 403 and "API key cannot sign" in res.json()["message"]  # type: ignore[attr-defined]
    make_user(db, "ann@x.org", ["qa"])
    qa = bearer(client, "ann@x.org")
    res = _close(client, alert_id, qa, password="not the password")
    assert res.status_code == 401 and "signature is refused" in res.json()["message"]  # type: ignore[attr-defined]
    no_sig = client.post(
        f"/api/v1/alerts/{alert_id}/close", json={"disposition": "release", "comment": "x"}, headers=qa
    )
    assert no_sig.status_code == 422 and no_sig.json()["field"] == "signature"
    bad_meaning = _close(client, alert_id, qa, meaning="because")
    assert bad_meaning.status_code == 422  # type: ignore[attr-defined]
    state = client.get(f"/api/v1/alerts/{alert_id}", headers=qa).json()
    assert state["state"] == "resolved" and state["signatures"] == []
    assert db.execute("SELECT count(*) FROM signatures").fetchone() == (0,)
    assert [
        e["reason"] for e in audit.trail(db, 1, "user", "ann@x.org") if e["action"] == "signature_failed"
    ] == ["wrong password"]


def test_segregation_of_duties_admin_does_not_disposition_unless_also_qa(
    client: TestClient, db: psycopg.Connection
) -> None:
    alert_id = _resolved_alert(db)
    make_user(db, "root@x.org", ["admin"])
    assert _close(client, alert_id, bearer(client, "root@x.org")).status_code == 403  # type: ignore[attr-defined]
    make_user(db, "both@x.org", ["admin", "qa"])
    assert _close(client, alert_id, bearer(client, "both@x.org")).status_code == 200  # type: ignore[attr-defined]


def test_the_application_role_cannot_rewrite_history(db_dsn: str, db: psycopg.Connection) -> None:
    registry.create_device(db, org=1, device=Device(id="A"), actor="alice")
    alert_id = _resolved_alert(db, "k2")
    make_user(db, "ann@x.org", ["qa"])
    with psycopg.connect(_app_dsn(db_dsn, db), autocommit=True) as app:
        assert app.execute("SELECT current_user").fetchone() == ("coldchain_app",)
        for statement in (
            "UPDATE audit_trail SET actor = 'mallory'",
            "DELETE FROM audit_trail",
            "TRUNCATE audit_trail",
            "INSERT INTO audit_trail (org_id, actor, action, entity, entity_key, prev_hash, hash)"
            " VALUES (1, 'm', 'x', 'y', 'z', '', '')",
            "UPDATE audit_heads SET hash = ''",
            "DELETE FROM audit_heads",
            "UPDATE alert_events SET comment = 'nothing happened'",
            "DELETE FROM alert_events",
            "TRUNCATE alert_events CASCADE",
            "UPDATE signatures SET meaning = 'review'",
            "DELETE FROM signatures",
            "TRUNCATE signatures",
            "ALTER TABLE audit_trail DISABLE TRIGGER ALL",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
        # Appending through the function, and ordinary work, still go.
        before = audit.verify_trail(app)
        with app.transaction():
            audit.record(app, org_id=1, actor="app", action="note", entity="device", key="A")
        alerts.transition(app, org=1, alert_id=alert_id, action="reopen", actor="ops", comment="again")
        after = audit.verify_trail(app)
        assert after.intact and after.rows >= before.rows + 2
    # Even the owner (the superuser here) cannot TRUNCATE the trail: a statement trigger refuses it.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("TRUNCATE audit_trail")


def _verify(db_dsn: str, command: str = "verify", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "audit", command],
        env={"DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin", "ENVIRONMENT": "development", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_verify_catches_an_altered_row(db_dsn: str, db: psycopg.Connection) -> None:
    for name in ("A", "B", "C"):
        registry.create_device(db, org=1, device=Device(id=name), actor="alice")
    done = _verify(db_dsn)
    assert done.returncode == 0 and "intact: 3 rows" in done.stdout, done.stderr
    # A superuser who switches the triggers off can edit a row; verification finds it.
    victim = db.execute("SELECT min(id) FROM audit_trail").fetchone()
    assert victim is not None
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE audit_trail SET actor = 'mallory' WHERE id = %s", (victim[0],))
    done = _verify(db_dsn)
    assert done.returncode != 0
    assert f"row {victim[0]}" in done.stderr and "altered" in done.stderr


def test_audit_verify_catches_removed_newest_rows(db_dsn: str, db: psycopg.Connection) -> None:
    for name in ("A", "B", "C"):
        registry.create_device(db, org=1, device=Device(id=name), actor="alice")
    newest = db.execute("SELECT max(id) FROM audit_trail").fetchone()
    assert newest is not None
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM audit_trail WHERE id = %s", (newest[0],))
    done = _verify(db_dsn)
    assert done.returncode != 0 and "recorded head" in done.stderr, done.stderr
    # Putting the head's hash back to the new last row is caught by the row count.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE audit_heads SET hash = (SELECT hash FROM audit_trail ORDER BY id DESC LIMIT 1)")
    done = _verify(db_dsn)
    assert done.returncode != 0 and "records 3 rows but the trail holds 2" in done.stderr, done.stderr


def test_audit_api_filters_and_prints_a_record_report(client: TestClient, db: psycopg.Connection) -> None:
    alert_id = _resolved_alert(db)
    make_user(db, "ann@x.org", ["qa"], name="Ann Example")
    qa = bearer(client, "ann@x.org")
    assert _close(client, alert_id, qa).status_code == 200  # type: ignore[attr-defined]
    rows = client.get(f"/api/v1/audit?entity=alert&id={alert_id}", headers=qa).json()
    assert [r["action"] for r in rows] == ["open", "resolve", "close", "sign"]
    assert [
        r["action"] for r in client.get("/api/v1/audit?actor=ann@x.org&action=login", headers=qa).json()
    ] == ["login"]
    assert client.get("/api/v1/audit?from=2026-01-01T00:00:00", headers=qa).status_code == 422
    page = client.get(f"/api/v1/audit/report?entity=alert&id={alert_id}", headers=qa)
    assert page.status_code == 200 and "Signed by Ann Example &lt;ann@x.org&gt;" in page.text
    viewer = {
        "Authorization": "Bearer " + auth.create_token(db, org=1, name="v", role=Role.VIEWER, actor="t")
    }
    assert client.get("/api/v1/audit", headers=viewer).status_code == 403


def test_record_hash_is_canonical() -> None:
    a = {"b": 1, "a": [1, 2], "t": datetime(2026, 1, 1, tzinfo=UTC)}
    b = {"t": datetime(2026, 1, 1, tzinfo=UTC), "a": [1, 2], "b": 1}
    assert record_hash(a) == record_hash(b) != record_hash({**a, "b": 2})
    assert PASSWORD not in record_hash(a)


_REWRITE = r"""
DO $$
DECLARE r record; prev bytea := '\x'; h bytea; first bigint;
BEGIN
    SELECT min(id) INTO first FROM audit_trail WHERE org_id = 1;
    FOR r IN SELECT * FROM audit_trail WHERE org_id = 1 ORDER BY id LOOP
        IF r.id = first THEN r.actor := 'mallory'; END IF;
        h := sha256(prev || convert_to(concat_ws(E'\x1f', r.org_id::text,
            to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), r.actor, r.action, r.entity,
            r.entity_key, coalesce(r.old_value::text, ''), coalesce(r.new_value::text, ''),
            coalesce(r.reason, '')), 'UTF8'));
        UPDATE audit_trail SET actor = r.actor, prev_hash = prev, hash = h WHERE id = r.id;
        prev := h;
    END LOOP;
    UPDATE audit_heads SET hash = prev WHERE org_id = 1;
END $$;
"""


def test_signed_checkpoints_catch_a_chain_rewritten_end_to_end(
    db_dsn: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    for name in ("A", "B"):
        registry.create_device(db, org=1, device=Device(id=name), actor="alice")
    # The platform key is the installation's (its data folder), as `coldchain up` has it.
    key_env = {
        "SECRET_KEY": "checkpoint-test-secret-key-0123456789abcdef",
        "DATA_DIR": str(tmp_path / "data"),
    }
    done = _verify(db_dsn, "checkpoint", **key_env)
    assert done.returncode == 0 and "signed 1 checkpoint" in done.stdout, done.stderr
    registry.create_device(db, org=1, device=Device(id="C"), actor="alice")  # after the checkpoint
    assert _verify(db_dsn, **key_env).returncode == 0
    # A superuser rewrites the whole chain consistently (every hash recomputed, the head moved):
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(_REWRITE)
    assert db.execute("SELECT actor FROM audit_trail ORDER BY id LIMIT 1").fetchone() == ("mallory",)
    no_key = {"DATA_DIR": str(tmp_path / "elsewhere")}
    assert _verify(db_dsn, **no_key).returncode == 0  # links and head alone cannot see it ...
    done = _verify(db_dsn, **key_env)  # ... the signed checkpoint can
    assert done.returncode != 0 and "rewritten" in done.stderr, done.stderr
    # A checkpoint forged without the platform key is caught too.
    db.execute(
        "INSERT INTO audit_checkpoints (org_id, last_id, rows, hash, mac)"
        " SELECT org_id, last_id, rows, hash, 'forged' FROM audit_heads WHERE org_id = 1"
    )
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM audit_checkpoints WHERE mac <> 'forged'")
    done = _verify(db_dsn, **key_env)
    assert done.returncode != 0 and "forged" in done.stderr, done.stderr


def test_checkpoints_signed_with_the_platform_key_are_verified_offline_with_its_public_key(
    db_dsn: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """The checkpoint is an Ed25519 signature by the platform's evidence key: an auditor holding
    only the public key (no SECRET_KEY, no data folder) finds a chain a superuser rewrote, and a
    checkpoint forged to match it. Checkpoints made with the older HMAC still verify with
    SECRET_KEY; one made after the platform key took over is refused."""
    secret = "checkpoint-test-secret-key-0123456789abcdef"
    for name in ("A", "B"):
        registry.create_device(db, org=1, device=Device(id=name), actor="alice")
    # A checkpoint from before: HMAC with the key derived from SECRET_KEY.
    legacy = derive_key(secret, "audit-checkpoint")
    org, last_id, rows, digest = db.execute(
        "SELECT org_id, last_id, rows, hash FROM audit_heads WHERE org_id = 1"
    ).fetchone() or (0, 0, 0, b"")
    mac = hmac.new(
        legacy, f"audit-checkpoint|{org}|{last_id}|{rows}|{bytes(digest).hex()}".encode(), hashlib.sha256
    ).hexdigest()
    db.execute(
        "INSERT INTO audit_checkpoints (org_id, last_id, rows, hash, mac) VALUES (%s, %s, %s, %s, %s)",
        (org, last_id, rows, digest, mac),
    )
    registry.create_device(db, org=1, device=Device(id="C"), actor="alice")
    data = tmp_path / "installation"
    done = _verify(db_dsn, "checkpoint", DATA_DIR=str(data))
    assert done.returncode == 0 and "signed 1 checkpoint(s) with ed25519:" in done.stdout, done.stderr
    (row,) = db.execute("SELECT mac, signature, key_id FROM audit_checkpoints WHERE signature IS NOT NULL")
    assert row[0] is None and len(row[1]) == 128 and row[2] == signing.signing_key(data).key_id
    pem = tmp_path / "platform-public-key.pem"
    pem.write_text(signing.public_pem(signing.signing_key(data).public))
    auditor = {"DATA_DIR": str(tmp_path / "auditor")}  # nothing but the public key file

    def verify(*extra: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coldchain.cli", "audit", "verify", *extra],
            env={"DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin", "ENVIRONMENT": "development", **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = verify("--public-key", str(pem), **auditor)
    assert done.returncode == 0 and "1 signed checkpoints checked" in done.stdout, done.stderr
    assert "1 not checked" in done.stdout  # the HMAC one, without SECRET_KEY
    done = verify("--public-key", str(pem), **auditor, SECRET_KEY=secret)
    assert done.returncode == 0 and "not checked" not in done.stdout, done.stdout

    # The superuser rewrites the chain and the head consistently: the public key alone finds it.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(_REWRITE)
    assert verify(**auditor).returncode == 0  # no key: links and head cannot see it
    done = verify("--public-key", str(pem), **auditor)
    assert done.returncode == 3 and "rewritten" in done.stderr, done.stderr

    # ... and re-signing the rewritten head needs the private key: a checkpoint signed with
    # another key, or an HMAC one (the database role knows neither), is refused.
    other = signing.signing_key(tmp_path / "mallory")
    head = db.execute("SELECT org_id, last_id, rows, hash FROM audit_heads WHERE org_id = 1").fetchone()
    assert head is not None
    message = audit.checkpoint_message(int(head[0]), int(head[1]), int(head[2]), bytes(head[3]))
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM audit_checkpoints")
        db.execute(
            "INSERT INTO audit_checkpoints (org_id, last_id, rows, hash, signature, key_id)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (*head, other.sign(message).hex(), signing.signing_key(data).key_id),  # claims the platform's id
        )
    done = verify("--public-key", str(pem), **auditor)
    assert done.returncode == 3 and "forged" in done.stderr, done.stderr
    # An HMAC checkpoint, even a correct one, after the platform key signs: refused.
    later_mac = hmac.new(
        legacy,
        f"audit-checkpoint|{head[0]}|{head[1]}|{head[2]}|{bytes(head[3]).hex()}".encode(),
        hashlib.sha256,
    ).hexdigest()
    platform = signing.signing_key(data)
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM audit_checkpoints")
        db.execute(
            "INSERT INTO audit_checkpoints (org_id, last_id, rows, hash, signature, key_id)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (*head, platform.sign(message).hex(), platform.key_id),
        )
        db.execute(
            "INSERT INTO audit_checkpoints (org_id, last_id, rows, hash, mac) VALUES (%s, %s, %s, %s, %s)",
            (*head, later_mac),
        )
    done = verify("--public-key", str(pem), **auditor, SECRET_KEY=secret)
    assert done.returncode == 3 and "after the platform key took over" in done.stderr, done.stderr


def test_the_services_role_signs_checkpoints_without_a_lock_it_may_not_take(
    db_dsn: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """`coldchain up` signs checkpoints as coldchain_app, which holds no UPDATE on audit_heads
    (so no row lock on it either): the checkpoint is made from the head as it stands."""
    registry.create_device(db, org=1, device=Device(id="A"), actor="alice")
    key = signing.signing_key(tmp_path)
    with psycopg.connect(_app_dsn(db_dsn, db), autocommit=True) as app:
        assert app.execute("SELECT current_user").fetchone() == ("coldchain_app",)
        assert audit.checkpoint(app, sign=key.sign, key_id=key.key_id) == 1
        assert audit.checkpoint(app, sign=key.sign, key_id=key.key_id) == 0  # the head did not move
    made = db.execute("SELECT count(*) FROM audit_checkpoints WHERE key_id = %s", (key.key_id,)).fetchone()
    assert made == (1,)
