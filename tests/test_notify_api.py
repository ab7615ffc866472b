"""Notification routes against a real PostgreSQL: contacts and policies for admins, SMS `ACK`
replies signed exactly as Twilio signs them, status callbacks, acknowledge links (confirm page,
single use, expiry) and delivery state per alert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import psycopg
import pytest
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from coldchain.access import Role
from coldchain.settings import Settings
from notify.links import issue_ack_token
from storage import alerts, auth, notify_directory, notify_outbox
from storage.notify_outbox import OutboxItem
from tests.support.api import api_client
from tests.support.notify import DRIVER, add_contact, add_shipment, open_alert

PUBLIC = "https://cc.example"
AUTH_TOKEN = "api-test-auth-token-0123456789abcdef"
SECRET = "k" * 40
INBOUND = f"{PUBLIC}/api/v1/notify/twilio/inbound"


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=db_dsn,
        public_url=PUBLIC,
        secret_key=SECRET,
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token=AUTH_TOKEN,
    )
    with api_client(db_dsn, settings) as c:
        yield c


def _bearer(db: psycopg.Connection, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth.create_token(db, org=1, name=role.value, role=role, actor='t')}"}


def _twilio_post(client: TestClient, url: str, form: dict[str, str], *, token: str = AUTH_TOKEN) -> object:
    signature = RequestValidator(token).compute_signature(url, form)
    path = url.removeprefix(PUBLIC)
    return client.post(
        path,
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
    )


def _sms(body: str, sender: str = DRIVER) -> dict[str, str]:
    return {
        "MessageSid": "SM" + "a" * 32,
        "AccountSid": "AC" + "0" * 32,
        "From": sender,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
    }


def _state(db: psycopg.Connection, alert_id: int) -> str:
    return alerts.get_alert(db, org=1, alert_id=alert_id).state.value


def test_contacts_and_policies_are_for_admins(client: TestClient, db: psycopg.Connection) -> None:
    admin = _bearer(db, Role.ADMIN)
    body = {
        "name": "Dana Dispatcher",
        "phone": "+4915100000002",
        "email": "dana@example.com",
        "roles": ["dispatcher"],
        "sites": ["Plant A"],
        "timezone": "Europe/Berlin",
        "quiet_hours": {"start": "22:00", "end": "06:00"},
    }
    res = client.put("/api/v1/notify/contacts/dana", json=body, headers=admin)
    assert res.status_code == 200, res.text
    assert res.json()["quiet_hours"] == {"start": "22:00", "end": "06:00", "days": None}
    bad = client.put("/api/v1/notify/contacts/x", json={**body, "phone": "0151 2345"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["field"] == "phone"
    zone = client.put("/api/v1/notify/contacts/x", json={**body, "timezone": "Mars/Base"}, headers=admin)
    assert zone.status_code == 422
    assert client.get("/api/v1/notify/contacts", headers=_bearer(db, Role.LOGISTICS)).status_code == 403
    assert [c["id"] for c in client.get("/api/v1/notify/contacts", headers=admin).json()] == ["dana"]

    ladder = {"tiers": [{"delay_s": 0, "channels": ["sms"], "roles": ["driver"]}], "default": True}
    first = client.put("/api/v1/notify/policies/night", json=ladder, headers=admin)
    second = client.put("/api/v1/notify/policies/night", json=ladder, headers=admin)
    assert (first.status_code, first.json()["key"], second.json()["key"]) == (201, "night@1", "night@2")
    assert notify_directory.default_policy(db, org=1) is not None
    wrong = {"tiers": [{"delay_s": 0, "channels": ["pigeon"], "roles": ["driver"]}]}
    assert client.put("/api/v1/notify/policies/p", json=wrong, headers=admin).status_code == 422

    rules = {
        "rules": [
            {
                "name": "night",
                "channels": ["sms"],
                "roles": ["dispatcher"],
                "window": {"start": "22:00", "end": "06:00"},
            }
        ]
    }
    res = client.put("/api/v1/notify/routing-rules", json=rules, headers=admin)
    assert res.status_code == 200 and res.json()[0]["window"]["start"] == "22:00"
    assert client.delete("/api/v1/notify/contacts/dana", headers=admin).status_code == 204
    assert client.get("/api/v1/notify/contacts", headers=admin).json() == []


def test_sms_reply_ack_acknowledges_and_a_bad_signature_is_refused(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    alert_id = open_alert(db, add_shipment(db), "x:sms-ack")

    forged = _twilio_post(client, INBOUND, _sms(f"ACK {alert_id}"), token="not-the-auth-token")
    assert forged.status_code == 403  # type: ignore[attr-defined]
    assert _state(db, alert_id) == "open"
    tampered_form = _sms(f"ACK {alert_id}")
    signature = RequestValidator(AUTH_TOKEN).compute_signature(INBOUND, _sms("hello"))
    tampered = client.post(
        "/api/v1/notify/twilio/inbound",
        content=urlencode(tampered_form),
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
    )
    assert tampered.status_code == 403 and _state(db, alert_id) == "open"

    stranger = _twilio_post(client, INBOUND, _sms(f"ACK {alert_id}", sender="+4915199999999"))
    assert "may not acknowledge" in stranger.text  # type: ignore[attr-defined]
    assert _state(db, alert_id) == "open"

    res = _twilio_post(client, INBOUND, _sms(f"ack #{alert_id}"))
    assert res.status_code == 200  # type: ignore[attr-defined]
    assert res.headers["content-type"].startswith("application/xml")  # type: ignore[attr-defined]
    assert f"Alert {alert_id} acknowledged" in res.text  # type: ignore[attr-defined]
    alert = alerts.get_alert(db, org=1, alert_id=alert_id)
    assert alert.state.value == "acknowledged" and alert.acknowledged_by == "Driver-1 (driver-1)"
    again = _twilio_post(client, INBOUND, _sms(f"ACK {alert_id}"))
    assert "already acknowledged" in again.text  # type: ignore[attr-defined]


def test_ack_link_confirm_page_then_single_use_post_and_expiry(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_contact(db, "dispatcher-1", ("dispatcher",), email="d@example.com")
    shipment = add_shipment(db)
    alert_id = open_alert(db, shipment, "x:link")
    token = issue_ack_token(SECRET, alert_id=alert_id, contact_id="dispatcher-1", ttl_s=3600)

    page = client.get(f"/ack/{token}")
    assert page.status_code == 200 and "<form method='post'>" in page.text
    assert client.get(f"/ack/{token}").status_code == 200  # a mail scanner's second look
    assert _state(db, alert_id) == "open"

    done = client.post(f"/ack/{token}")
    assert done.status_code == 200 and "acknowledged" in done.text
    alert = alerts.get_alert(db, org=1, alert_id=alert_id)
    assert alert.state.value == "acknowledged" and alert.acknowledged_by == "Dispatcher-1 (dispatcher-1)"
    assert client.post(f"/ack/{token}").status_code == 409
    assert client.get(f"/ack/{token}").status_code == 409

    other = open_alert(db, shipment, "x:link2")
    expired = issue_ack_token(
        SECRET, alert_id=other, contact_id="dispatcher-1", ttl_s=60, now=time.time() - 3600
    )
    assert client.get(f"/ack/{expired}").status_code == 410
    assert client.post(f"/ack/{expired}").status_code == 410
    forged = issue_ack_token("f" * 40, alert_id=other, contact_id="dispatcher-1")
    assert client.post(f"/ack/{forged}").status_code == 403
    assert _state(db, other) == "open"


def test_status_callbacks_move_delivery_state_and_failures_show_on_the_alert(
    client: TestClient, db: psycopg.Connection
) -> None:
    alert_id = open_alert(db, add_shipment(db), "x:status")
    now = datetime.now(UTC)
    with db.transaction():
        notify_outbox.enqueue(
            db,
            [
                OutboxItem(
                    org_id=1,
                    idempotency_key=key,
                    alert_id=alert_id,
                    channel="sms",
                    recipient=DRIVER,
                    state="pending",
                    due_at=now,
                    next_attempt_at=now,
                    tier=1,
                    repeat_index=0,
                    contact_id=contact,
                    severity="critical",
                )
                for key, contact in (("k-ok", "a"), ("k-bad", "b"))
            ],
            now=now,
        )
        claimed = notify_outbox.claim_due(db, now=now, limit=10, grace=timedelta(seconds=60))
        for row in claimed:
            notify_outbox.record_outcome(
                db, row_id=row.id, state="queued", now=now, provider_id=f"SM-{row.contact_id}"
            )
    url = f"{PUBLIC}/api/v1/notify/twilio/status?notification="
    for key, sid, status in (
        ("k-ok", "SM-a", "delivered"),
        ("k-ok", "SM-a", "sent"),
        ("k-bad", "SM-b", "undelivered"),
    ):
        form = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "0" * 32}
        if status == "undelivered":
            form["ErrorCode"] = "30003"
        res = _twilio_post(client, url + key, form)
        assert res.status_code == 204  # type: ignore[attr-defined]
    bad_sig = client.post(
        "/api/v1/notify/twilio/status?notification=k-bad",
        content="MessageSid=SM-b&MessageStatus=delivered",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
    )
    assert bad_sig.status_code == 403
    view = client.get(f"/api/v1/alerts/{alert_id}/notifications", headers=_bearer(db, Role.VIEWER))
    assert view.status_code == 200
    doc = view.json()
    states = {n["idempotency_key"]: (n["state"], n["failed"], n["last_error"]) for n in doc["notifications"]}
    assert states == {
        "k-ok": ("delivered", False, None),
        "k-bad": ("undelivered", True, "provider error 30003"),
    }
    assert doc["failed"] == 1
    assert (
        client.get("/api/v1/alerts/999999/notifications", headers=_bearer(db, Role.ADMIN)).status_code == 404
    )
