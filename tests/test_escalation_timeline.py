"""Escalation on a controllable clock, inside the notification service, against a real PostgreSQL, the
real Twilio SDK (local stub) and aiosmtpd: tier 1 at once, tier 2 at 10 min, tier 3 at 30 min;
acknowledgement stops the ladder; a worker killed between tiers resumes without sending twice."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from notify.outbox import OutboxOptions
from notify.planner import Planner
from notify.service import NotificationService
from storage import alerts, notify_outbox
from tests.support.notify import (
    DISPATCHER,
    DRIVER,
    QA,
    Clock,
    Mailbox,
    TwilioStub,
    add_contact,
    add_shipment,
    notify_settings,
    open_alert,
    set_policy,
    settled,
)
from tests.support.notify import mailbox as mailbox
from tests.support.notify import stub as stub
from tests.support.waiting import wait_until

LADDER = [
    {"delay_s": 0, "channels": ["sms"], "roles": ["driver"]},
    {"delay_s": 600, "channels": ["sms", "email"], "roles": ["dispatcher"]},
    {"delay_s": 1800, "channels": ["sms", "voice"], "roles": ["qa_manager"]},
]


@pytest.fixture
def ladder(db: psycopg.Connection) -> Iterator[int]:
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    add_contact(db, "dispatcher-1", ("dispatcher",), phone=DISPATCHER, email="dispatch@example.com")
    add_contact(db, "qa-1", ("qa_manager",), phone=QA, email="qa@example.com")
    set_policy(db, LADDER)
    yield add_shipment(db)


def _service(dsn: str, stub: TwilioStub, smtp_port: int, clock: Clock) -> NotificationService:
    # The tick is driven by the test (tick_s is long), as the scheduler would at each interval.
    return NotificationService(
        dsn=dsn,
        settings=notify_settings(dsn, stub, smtp_port=smtp_port),
        clock_ms=clock,
        options=OutboxOptions(poll_s=0.05, tick_s=3600.0),
    )


def _tick(service: NotificationService) -> None:
    service.tick()


def _sent(stub: TwilioStub, box: Mailbox) -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for r in stub.requests:
        counts[(r.kind, r.field("To") or "")] += 1
    for m in box.messages:
        counts[("Email", str(m["To"]))] += 1
    return counts


def _quiet(dsn: str, clock: Clock) -> None:
    wait_until(lambda: settled(dsn, clock), what="the outbox to settle")


def _opened_at(db: psycopg.Connection, alert_id: int) -> object:
    return alerts.get_alert(db, org=1, alert_id=alert_id).opened_at


def test_tiers_go_out_at_0_10_and_30_minutes_and_a_killed_worker_resumes(
    db_dsn: str,
    db: psycopg.Connection,
    ladder: int,
    stub: TwilioStub,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, smtp_port = mailbox
    clock = Clock()
    first = _service(db_dsn, stub, smtp_port, clock)
    first.start()
    try:
        alert_id = open_alert(db, ladder, "x:ladder")
        opened = alerts.get_alert(db, org=1, alert_id=alert_id).opened_at
        wait_until(lambda: len(stub.requests) == 1, what="tier 1")
        clock.set(opened + timedelta(minutes=9, seconds=59))
        _tick(first)
        _quiet(db_dsn, clock)
        assert _sent(stub, box) == {("Messages", DRIVER): 1}
        clock.set(opened + timedelta(minutes=10))
        _tick(first)
        wait_until(lambda: len(stub.requests) == 2 and len(box.messages) == 1, what="tier 2")
        _quiet(db_dsn, clock)
        # The worker dies between tiers: its database connections drop mid-way, then it is gone.
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        first.stop()
    # Meanwhile tier 3 came due and a planner (another process) enqueued it, then died too.
    clock.set(opened + timedelta(minutes=30))
    with psycopg.connect(db_dsn) as conn:
        Planner().plan_alert(conn, alert_id, now=clock.now())
        Planner().plan_alert(conn, alert_id, now=clock.now())  # a second run adds nothing
    assert notify_outbox.outbox_counts(db).get("pending") == 2
    second = _service(db_dsn, stub, smtp_port, clock)
    with second:
        wait_until(lambda: len(stub.requests) == 4, what="tier 3 after the restart")
        _tick(second)
        clock.set(opened + timedelta(minutes=31))
        _tick(second)
        _quiet(db_dsn, clock)
    assert _sent(stub, box) == {
        ("Messages", DRIVER): 1,
        ("Messages", DISPATCHER): 1,
        ("Email", "dispatch@example.com"): 1,
        ("Messages", QA): 1,
        ("Calls", QA): 1,
    }
    plan = db.execute("SELECT policy_key, next_check_at FROM notify_alert_plans").fetchone()
    assert plan == ("night@1", None)  # no repeats in this policy: nothing more is due


def test_acknowledged_at_12_minutes_tier_3_is_never_sent(
    db_dsn: str,
    db: psycopg.Connection,
    ladder: int,
    stub: TwilioStub,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, smtp_port = mailbox
    clock = Clock()
    with _service(db_dsn, stub, smtp_port, clock) as service:
        alert_id = open_alert(db, ladder, "x:ack")
        opened = alerts.get_alert(db, org=1, alert_id=alert_id).opened_at
        wait_until(lambda: len(stub.requests) == 1, what="tier 1")
        clock.set(opened + timedelta(minutes=10))
        _tick(service)
        wait_until(lambda: len(stub.requests) == 2 and len(box.messages) == 1, what="tier 2")
        clock.set(opened + timedelta(minutes=12))
        alerts.transition(db, org=1, alert_id=alert_id, action="acknowledge", actor="dispatcher-1")
        wait_until(
            lambda: db.execute("SELECT stopped_at IS NOT NULL FROM notify_alert_plans").fetchone() == (True,),
            what="the planner to stop the ladder",
        )
        for minutes in (30, 45, 90):
            clock.set(opened + timedelta(minutes=minutes))
            _tick(service)
        _quiet(db_dsn, clock)
    assert _sent(stub, box) == {
        ("Messages", DRIVER): 1,
        ("Messages", DISPATCHER): 1,
        ("Email", "dispatch@example.com"): 1,
    }
    rows = notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)
    assert all(r.tier in (1, 2) for r in rows)


def test_repeats_until_acknowledged_and_only_the_latest_missed_repeat_after_an_outage(
    db_dsn: str,
    db: psycopg.Connection,
    stub: TwilioStub,
) -> None:
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    set_policy(db, [{"delay_s": 0, "channels": ["sms"], "roles": ["driver"]}], repeat_interval_s=900)
    shipment = add_shipment(db)
    clock = Clock()
    with NotificationService(
        dsn=db_dsn,
        settings=notify_settings(db_dsn, stub),
        clock_ms=clock,
        options=OutboxOptions(poll_s=0.05, tick_s=3600.0),
    ) as service:
        alert_id = open_alert(db, shipment, "x:repeat")
        opened = alerts.get_alert(db, org=1, alert_id=alert_id).opened_at
        wait_until(lambda: len(stub.requests) == 1, what="the first SMS")
        clock.set(opened + timedelta(minutes=15))
        _tick(service)
        wait_until(lambda: len(stub.requests) == 2, what="the first repeat")
        clock.set(opened + timedelta(minutes=61))  # an outage swallowed the 30 and 45 min repeats
        _tick(service)
        wait_until(lambda: len(stub.requests) == 3, what="the latest missed repeat")
        _quiet(db_dsn, clock)
    keys = [
        notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)[i].repeat_index for i in range(3)
    ]
    assert keys == [0, 1, 4]
