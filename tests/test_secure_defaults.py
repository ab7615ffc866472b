"""Secure by default: ack links honour the contact's current rights, webhooks only go to public
https endpoints (unless a test deployment allows otherwise)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.errors import ValidationError
from coldchain.settings import Settings
from coldchain.webhook_url import public_address, webhook_host
from notify.links import issue_ack_token
from storage import alerts, auth
from storage import notify_directory as store
from storage.db import open_pool
from tests.test_notify_outbox import add_contact, add_shipment, open_alert

SECRET = "secure-defaults-test-key-0123456789abcdef"


def _client(db_dsn: str, **extra: object) -> Iterator[TestClient]:
    settings = Settings(database_url=db_dsn, secret_key=SECRET, **extra)  # type: ignore[arg-type]
    with open_pool(db_dsn, max_size=2) as pool, TestClient(create_app(settings, pool=pool)) as c:
        yield c


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    yield from _client(db_dsn)


@pytest.mark.parametrize(
    ("contact", "fields"),
    [("no-ack", {"may_acknowledge": False}), ("gone", {})],
)
def test_an_ack_link_is_refused_when_the_contact_may_no_longer_acknowledge(
    client: TestClient, db: psycopg.Connection, contact: str, fields: dict[str, object]
) -> None:
    add_contact(db, contact, ("dispatcher",), email="d@example.com", **fields)
    if contact == "gone":  # removed (disabled) after the link was sent
        store.delete_contact(db, org=1, contact_id=contact, actor="test")
    alert_id = open_alert(db, add_shipment(db), f"x:{contact}")
    token = issue_ack_token(SECRET, alert_id=alert_id, contact_id=contact, ttl_s=3600)
    res = client.post(f"/ack/{token}")
    assert res.status_code == 403 and "may not acknowledge" in res.text
    assert alerts.get_alert(db, org=1, alert_id=alert_id).state.value == "open"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "https"),
        ("https://127.0.0.1/x", "not a public address"),
        ("https://10.1.2.3/x", "not a public address"),
        ("https://192.168.0.10:8443/x", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://[::1]/x", "not a public address"),
        ("https://[::ffff:10.0.0.1]/x", "not a public address"),
        ("https://localhost/x", "localhost"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
    ],
)
def test_webhooks_must_be_public_https(
    client: TestClient, db: psycopg.Connection, url: str, why: str
) -> None:
    admin = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="a", role=Role.ADMIN, actor="t")}
    body = {"name": "Hook", "webhook_url": url, "webhook_secret": "s" * 20}
    res = client.put("/api/v1/notify/contacts/hook", json=body, headers=admin)
    assert res.status_code == 422 and why in res.json()["message"] and res.json()["field"] == "webhook_url"


def test_a_public_webhook_is_accepted_and_tests_may_allow_loopback(
    db_dsn: str, db: psycopg.Connection
) -> None:
    admin = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="a", role=Role.ADMIN, actor="t")}
    body = {"name": "Hook", "webhook_url": "https://93.184.215.14/hook", "webhook_secret": "s" * 20}
    for client in _client(db_dsn):
        assert client.put("/api/v1/notify/contacts/hook", json=body, headers=admin).status_code == 200
        local = {**body, "webhook_url": "http://127.0.0.1:9/hook"}
        assert client.put("/api/v1/notify/contacts/local", json=local, headers=admin).status_code == 422
    for client in _client(db_dsn, webhook_allow_private=True):
        assert client.put("/api/v1/notify/contacts/local", json=local, headers=admin).status_code == 200


def test_address_rules() -> None:
    assert public_address("93.184.215.14") and public_address("2606:4700::1111")
    assert not any(public_address(a) for a in ("100.64.0.1", "0.0.0.0", "224.0.0.1", "fe80::1", "fc00::1"))
    with pytest.raises(ValidationError):
        webhook_host("https:///nohost")
    assert webhook_host("https://hooks.example.com/x") == ("hooks.example.com", 443)
