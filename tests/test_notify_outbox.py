"""The notification outbox against a real PostgreSQL, the real Twilio SDK (talking to the local
Twilio stub) and aiosmtpd: planning, delivery, retries, failures per alert, reconciliation of
unconfirmed sends by status callback, and exactly-once delivery across a kill -9 of the notifier."""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from coldchain.domain import Severity
from coldchain.settings import Settings
from notify.outbox import OutboxOptions
from notify.service import NotificationService
from storage import notify_outbox
from tests.support.net import free_port
from tests.support.notify import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    DISPATCHER,
    DRIVER,
    FROM,
    ApiServer,
    Carrier,
    Clock,
    Mailbox,
    add_contact,
    add_shipment,
    callback_key,
    complete_requests,
    notify_settings,
    open_alert,
    outbox_states,
    set_policy,
    settled,
    sms_to,
    start_notifier,
)
from tests.support.notify import mailbox as mailbox
from tests.support.notify import stub as stub
from tests.support.twilio_stub import TwilioStub
from tests.support.waiting import wait_until


def _service(dsn: str, settings: Settings, clock: Clock, **options: Any) -> NotificationService:
    opts = {"poll_s": 0.05, "tick_s": 3600.0, "backoff_base_s": 30.0, "ambiguous_grace_s": 60.0, **options}
    return NotificationService(dsn=dsn, settings=settings, clock_ms=clock, options=OutboxOptions(**opts))


def test_alert_to_sms_and_email_with_chart_and_ack_link(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp_port = mailbox
    settings = notify_settings(db_dsn, stub, public_url="https://cc.example", smtp_port=smtp_port)
    add_contact(db, "driver-1", ("driver",), phone=DRIVER, email="driver@example.com")
    set_policy(db, [{"delay_s": 0, "channels": ["sms", "email"], "roles": ["driver"]}])
    shipment = add_shipment(db)
    clock = Clock()
    with _service(db_dsn, settings, clock):
        alert_id = open_alert(db, shipment, "x:1")  # NOTIFY alerts wakes the planner
        wait_until(lambda: sms_to(stub, DRIVER) == 1 and len(box.messages) == 1, what="SMS and e-mail")
        wait_until(lambda: settled(db_dsn), what="the outbox to settle")
    (sms,) = stub.requests
    assert f"Reply ACK {alert_id}" in (sms.field("Body") or "")
    assert callback_key(sms) == f"esc:{alert_id}:night@1:t1:r0:driver-1:sms"
    assert (sms.field("StatusCallback") or "").startswith("https://cc.example/api/v1/notify/twilio/status?")
    (mail,) = box.messages
    assert mail["To"] == "driver@example.com" and f"Alert {alert_id}" in str(mail["Subject"])
    text = mail.get_body(("plain",))
    assert text is not None and "https://cc.example/ack/" in text.get_content()
    rows = notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)
    assert sorted((r.channel, r.state) for r in rows) == [("email", "sent"), ("sms", "queued")]
    assert all(r.attempts == 1 for r in rows)


def test_retryable_failure_backs_off_then_sends_and_permanent_failure_is_visible(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub
) -> None:
    settings = notify_settings(db_dsn, stub)
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    add_contact(db, "driver-2", ("driver",), phone="+4915100000009")
    set_policy(db, [{"delay_s": 0, "channels": ["sms"], "roles": ["driver"]}])
    shipment = add_shipment(db)
    clock = Clock()
    stub.fail_next(503, code=20503)  # driver-1 goes first (contacts in id order)
    stub.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")
    with _service(db_dsn, settings, clock, send_threads=1) as service:
        alert_id = open_alert(db, shipment, "x:2")
        wait_until(lambda: len(stub.requests) == 2, what="both first attempts")
        wait_until(lambda: settled(db_dsn, clock), what="the first attempts to be recorded")
        rows = {r.contact_id: r for r in notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)}
        assert rows["driver-1"].state == "pending" and "503" in (rows["driver-1"].last_error or "")
        assert rows["driver-2"].state == "failed" and "21211" in (rows["driver-2"].last_error or "")
        retry_at = rows["driver-1"].next_attempt_at
        assert clock.now() + timedelta(seconds=14) < retry_at  # backoff 30 s with jitter >= 15 s
        time.sleep(0.3)
        assert len(stub.requests) == 2  # not before its time
        clock.set(retry_at + timedelta(seconds=1))
        with psycopg.connect(db_dsn) as conn:
            service.worker.deliver_due(conn)
        wait_until(lambda: sms_to(stub, DRIVER) == 1, what="the retry")
    rows = {r.contact_id: r for r in notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)}
    assert (rows["driver-1"].state, rows["driver-1"].attempts) == ("queued", 2)
    assert (rows["driver-2"].state, rows["driver-2"].attempts) == ("failed", 1)
    assert len(stub.requests) == 3


def test_unconfirmed_send_waits_for_a_callback_before_sending_again(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub
) -> None:
    """Two rows left `sending` by a crash: one is confirmed by Twilio's status callback during the
    grace period and never sent again; the other, unconfirmed, is sent once after the grace."""
    port = free_port()
    settings = notify_settings(db_dsn, stub, public_url=f"http://127.0.0.1:{port}")
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    add_contact(db, "driver-2", ("driver",), phone="+4915100000009")
    set_policy(db, [{"delay_s": 0, "channels": ["sms"], "roles": ["driver"]}])
    shipment = add_shipment(db)
    clock = Clock()
    service = _service(db_dsn, settings, clock)
    alert_id = open_alert(db, shipment, "x:3")
    with psycopg.connect(db_dsn) as conn:
        service.planner.plan_alert(conn, alert_id, now=clock.now())
        with conn.transaction():
            claimed = notify_outbox.claim_due(conn, now=clock.now(), limit=10, grace=timedelta(seconds=60))
    assert len(claimed) == 2  # both `sending`, committed: then the "crash"
    first = next(r for r in claimed if r.contact_id == "driver-1")
    # Twilio did get driver-1's message before the crash: send it as the SDK would have.
    from notify.sms import TwilioSms

    with TwilioSms(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM,
        api_base_url=stub.base_url,
        status_callback_url=f"http://127.0.0.1:{port}/api/v1/notify/twilio/status",
    ) as sms:
        receipt = sms.send(to=DRIVER, body="alert", idempotency_key=first.idempotency_key)
    with ApiServer(settings, db_dsn), service:
        time.sleep(0.3)
        assert len(stub.requests) == 1  # within the grace period nothing is sent again
        assert stub.send_status_callback(receipt.provider_id or "", "delivered") == 204
        clock.advance(61)
        with psycopg.connect(db_dsn) as conn:
            service.worker.deliver_due(conn)
        wait_until(lambda: sms_to(stub, "+4915100000009") == 1, what="the unconfirmed row's resend")
        time.sleep(0.2)
    assert sms_to(stub, DRIVER) == 1
    rows = {r.contact_id: r for r in notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)}
    assert (rows["driver-1"].state, rows["driver-1"].provider_id) == ("delivered", receipt.provider_id)
    assert (rows["driver-2"].state, rows["driver-2"].attempts) == ("queued", 2)


def test_quiet_hours_fold_a_warning_into_a_digest_but_critical_goes_at_once(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub
) -> None:
    settings = notify_settings(db_dsn, stub)
    from datetime import time as clock_time

    add_contact(
        db,
        "dispatcher-1",
        ("dispatcher",),
        phone=DISPATCHER,
        timezone="Europe/Berlin",
        quiet_start=clock_time(22, 0),
        quiet_end=clock_time(6, 0),
    )
    set_policy(db, [{"delay_s": 0, "channels": ["sms"], "roles": ["dispatcher"]}])
    shipment = add_shipment(db)
    clock = Clock()
    clock.set(datetime(2026, 1, 15, 23, 30, tzinfo=UTC))  # 00:30 in Berlin
    service = _service(db_dsn, settings, clock)
    warning = open_alert(db, shipment, "x:w1", Severity.WARNING)
    warning2 = open_alert(db, shipment, "x:w2", Severity.WARNING)
    critical = open_alert(db, shipment, "x:c1", Severity.CRITICAL)
    # The alerts opened "now" in the database; move them to the test's clock.
    db.execute("UPDATE alerts SET opened_at = %s", (clock.now() - timedelta(seconds=5),))
    with service:
        service.tick()
        wait_until(lambda: len(stub.requests) == 1, what="the critical SMS")
        rows = notify_outbox.notifications_for_alert(db, org=1, alert_id=warning)
        assert [(r.state, r.gate_reason) for r in rows] == [("held", "quiet_hours")]
        assert rows[0].next_attempt_at == datetime(2026, 1, 16, 5, 0, tzinfo=UTC)  # 06:00 Berlin
        clock.set(datetime(2026, 1, 16, 5, 0, 30, tzinfo=UTC))
        service.tick()
        wait_until(lambda: len(stub.requests) == 2, what="the digest")
        wait_until(lambda: settled(db_dsn), what="the outbox to settle")
    first, digest = stub.requests
    assert f"CRITICAL alert {critical}" in (first.field("Body") or "")
    body = digest.field("Body") or ""
    assert body.startswith("Coldchain digest: 2 alert(s).") and str(warning2) in body
    members = notify_outbox.notifications_for_alert(db, org=1, alert_id=warning)
    assert [r.state for r in members] == ["digested", "queued"]  # the row and its digest


def test_kill_9_of_the_notifier_during_a_burst_delivers_each_notification_exactly_once(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub
) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = notify_settings(db_dsn, stub, public_url=public)
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    set_policy(db, [{"delay_s": 0, "channels": ["sms"], "roles": ["driver"]}])
    shipment = add_shipment(db)
    burst = 240
    with db.transaction():
        ids = [open_alert(db, shipment, f"x:burst:{i}") for i in range(burst)]
    stub.set_delay(0.02)  # a realistic provider: the burst takes a while
    def notifier() -> subprocess.Popen[bytes]:
        return start_notifier(db_dsn, stub, public_url=public)

    with ApiServer(settings, db_dsn), Carrier(stub) as carrier:
        first = notifier()
        try:
            wait_until(lambda: len(stub.requests) >= burst // 3, timeout=30, what="the burst to start")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        at_kill = len(stub.requests)
        assert at_kill < burst, "the notifier finished before it could be killed"
        second = notifier()
        try:
            wait_until(
                lambda: len(complete_requests(stub)) >= burst and settled(db_dsn),
                timeout=60,
                what="recovery",
            )
            wait_until(lambda: sum(carrier.statuses.values()) >= burst, what="every status callback")
            time.sleep(0.5)
        finally:
            second.terminate()
            second.wait(10)
    keys = collections.Counter(callback_key(r) for r in complete_requests(stub))
    expected = {f"esc:{i}:night@1:t1:r0:driver-1:sms" for i in ids}
    assert set(keys) == expected  # none lost
    assert max(keys.values()) == 1  # none duplicated
    assert len(complete_requests(stub)) == burst
    assert carrier.statuses[204] == burst
    assert outbox_states(db_dsn) == {"sent": burst}
