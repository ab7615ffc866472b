"""Escalation timeline with a controllable clock: tiers at their delays, stop on acknowledge,
a restarted worker recomputing from the recorded truth sends nothing twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain.domain import Severity
from coldchain.errors import ValidationError
from notify import (
    AlertScope,
    Channel,
    Contact,
    DueNotification,
    EscalationPolicy,
    EscalationTier,
    SentKey,
    due_notifications,
    example_policy,
    next_due_at,
)

OPENED = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
CONTACTS = [
    Contact(id="drv-1", name="Driver", phone="+4915100000001", roles=frozenset({"driver"}),
            routes=frozenset({"R7"})),
    Contact(id="drv-2", name="Other driver", phone="+4915100000002", roles=frozenset({"driver"}),
            routes=frozenset({"R9"})),
    Contact(id="disp-1", name="Dispatcher", phone="+4915100000003", email="d@example.com",
            roles=frozenset({"dispatcher"})),
    Contact(id="qa-1", name="QA manager", phone="+4915100000004", email="qa@example.com",
            roles=frozenset({"qa_manager"})),
]  # fmt: skip
SCOPE = AlertScope(alert_id=1234, severity=Severity.ALARM, route="R7")


def three_tiers(repeat: int | None = None, max_repeats: int | None = None) -> EscalationPolicy:
    return EscalationPolicy(
        id="night@1",
        tiers=(
            EscalationTier(0, (Channel.SMS,), roles=frozenset({"driver"})),
            EscalationTier(600, (Channel.SMS,), roles=frozenset({"dispatcher"})),
            EscalationTier(1800, (Channel.SMS, Channel.EMAIL), roles=frozenset({"qa_manager"})),
        ),
        repeat_interval_s=repeat,
        max_repeats=max_repeats,
    )


@dataclass
class Clock:
    now: datetime

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Outbox:
    """What the database would hold: one row per idempotency key, refusing duplicates."""

    rows: dict[str, DueNotification] = field(default_factory=dict)
    duplicates: int = 0

    def sent_keys(self) -> set[SentKey]:
        return {row.sent_key for row in self.rows.values()}

    def record(self, items: list[DueNotification]) -> None:
        for item in items:
            if item.idempotency_key in self.rows:
                self.duplicates += 1
            self.rows[item.idempotency_key] = item


def tick(
    policy: EscalationPolicy, outbox: Outbox, now: datetime, acked: datetime | None = None
) -> list[DueNotification]:
    """One worker pass: recompute from the outbox's truth, enqueue what is due."""
    due = due_notifications(
        policy,
        alert_id=1234,
        alert_opened_at=OPENED,
        acknowledged_at=acked,
        already_sent=outbox.sent_keys(),
        now=now,
        contacts=CONTACTS,
        scope=SCOPE,
    )
    outbox.record(due)
    return due


def who(items: list[DueNotification]) -> list[tuple[int, str, str]]:
    return [(d.tier, d.contact_id, d.channel.value) for d in items]


def test_unacknowledged_alert_climbs_to_tier_2_at_10_and_tier_3_at_30_minutes() -> None:
    policy, outbox, clock = three_tiers(), Outbox(), Clock(OPENED)
    assert who(tick(policy, outbox, clock.now)) == [(1, "drv-1", "sms")]  # not drv-2 (route R9)
    assert tick(policy, outbox, clock.advance(minutes=9, seconds=59)) == []
    assert next_due_at(policy, alert_opened_at=OPENED, acknowledged_at=None, now=clock.now) == (
        OPENED + timedelta(minutes=10)
    )
    assert who(tick(policy, outbox, clock.advance(seconds=1))) == [(2, "disp-1", "sms")]
    assert tick(policy, outbox, clock.advance(minutes=19, seconds=59)) == []
    third = tick(policy, outbox, clock.advance(seconds=1))
    assert who(third) == [(3, "qa-1", "email"), (3, "qa-1", "sms")]
    assert third[0].due_at == OPENED + timedelta(minutes=30)
    assert tick(policy, outbox, clock.advance(hours=5)) == []
    assert next_due_at(policy, alert_opened_at=OPENED, acknowledged_at=None, now=clock.now) is None
    assert outbox.duplicates == 0 and len(outbox.rows) == 4


def test_acknowledged_at_12_minutes_tier_3_is_never_due() -> None:
    policy, outbox, clock = three_tiers(repeat=300), Outbox(), Clock(OPENED)
    tick(policy, outbox, clock.now)
    tick(policy, outbox, clock.advance(minutes=10))
    acked = OPENED + timedelta(minutes=12)
    for minutes in range(11, 120):
        # Before the acknowledgement nothing new was due; after it nothing ever is again.
        assert tick(policy, outbox, OPENED + timedelta(minutes=minutes, seconds=30), acked) == []
    assert {row.tier for row in outbox.rows.values()} == {1, 2}
    assert next_due_at(policy, alert_opened_at=OPENED, acknowledged_at=acked, now=acked) is None


def test_restarted_worker_resumes_and_sends_nothing_twice() -> None:
    policy = three_tiers(repeat=900, max_repeats=3)
    outbox = Outbox()
    # The first worker runs every minute for 20 minutes, then is killed.
    for minute in range(0, 21):
        tick(policy, outbox, OPENED + timedelta(minutes=minute))
    before = dict(outbox.rows)
    # A new worker starts at 20 min and recomputes from the same truth: nothing missing.
    assert tick(policy, outbox, OPENED + timedelta(minutes=20)) == []
    # It carries on to the end of the schedule.
    for minute in range(20, 240):
        tick(policy, outbox, OPENED + timedelta(minutes=minute, seconds=17))
    assert outbox.duplicates == 0
    assert set(before) <= set(outbox.rows)
    repeats = sorted((r.tier, r.repeat_index, r.channel.value) for r in outbox.rows.values())
    assert repeats == [
        (1, 0, "sms"), (1, 1, "sms"), (1, 2, "sms"), (1, 3, "sms"),
        (2, 0, "sms"), (2, 1, "sms"), (2, 2, "sms"), (2, 3, "sms"),
        (3, 0, "email"), (3, 0, "sms"), (3, 1, "email"), (3, 1, "sms"),
        (3, 2, "email"), (3, 2, "sms"), (3, 3, "email"), (3, 3, "sms"),
    ]  # fmt: skip


def test_crash_between_send_and_record_is_covered_by_the_deterministic_key() -> None:
    policy, outbox = three_tiers(), Outbox()
    at_ten = OPENED + timedelta(minutes=10, seconds=5)
    first = tick(policy, Outbox(), at_ten)  # computed, "sent", but never recorded
    again = tick(policy, outbox, at_ten)
    assert [d.idempotency_key for d in first] == [d.idempotency_key for d in again]
    assert again[1].idempotency_key == "esc:1234:night@1:t2:r0:disp-1:sms"


def test_after_an_outage_only_the_latest_missed_repeat_is_sent() -> None:
    policy, outbox = three_tiers(repeat=600), Outbox()
    tick(policy, outbox, OPENED)
    # The worker was down from 1 to 35 minutes.
    due = tick(policy, outbox, OPENED + timedelta(minutes=35))
    assert sorted((d.tier, d.repeat_index, d.channel.value) for d in due) == [
        (1, 3, "sms"), (2, 2, "sms"), (3, 0, "email"), (3, 0, "sms"),
    ]  # fmt: skip
    assert tick(policy, outbox, OPENED + timedelta(minutes=39)) == []
    nxt = next_due_at(
        policy, alert_opened_at=OPENED, acknowledged_at=None, now=OPENED + timedelta(minutes=39)
    )
    assert nxt == OPENED + timedelta(minutes=40)


def test_contact_named_by_id_is_included_regardless_of_scope() -> None:
    policy = EscalationPolicy(
        id="p", tiers=(EscalationTier(0, (Channel.SMS,), contact_ids=frozenset({"drv-2"})),)
    )
    due = due_notifications(
        policy, alert_id=1, alert_opened_at=OPENED, acknowledged_at=None, already_sent=set(),
        now=OPENED, contacts=CONTACTS, scope=SCOPE,
    )  # fmt: skip
    assert who(due) == [(1, "drv-2", "sms")]


def test_policy_validation_and_the_example_policy() -> None:
    with pytest.raises(ValidationError):
        EscalationPolicy(id="p", tiers=())
    with pytest.raises(ValidationError):
        EscalationPolicy(
            id="p",
            tiers=(
                EscalationTier(600, (Channel.SMS,), roles=frozenset({"a"})),
                EscalationTier(0, (Channel.SMS,), roles=frozenset({"b"})),
            ),
        )
    with pytest.raises(ValidationError):
        EscalationTier(0, (), roles=frozenset({"a"}))
    with pytest.raises(ValidationError):
        EscalationTier(0, (Channel.SMS,))
    with pytest.raises(ValidationError):
        due_notifications(
            three_tiers(), alert_id=1, alert_opened_at=datetime(2026, 1, 1), acknowledged_at=None,
            already_sent=set(), now=OPENED, contacts=CONTACTS,
        )  # fmt: skip
    example = example_policy()
    assert [t.delay_s for t in example.tiers] == [0, 600, 1800]
    assert [sorted(t.roles) for t in example.tiers] == [["driver"], ["dispatcher"], ["qa_manager"]]


@settings(max_examples=200, deadline=None)
@given(
    checks=st.lists(st.integers(0, 4 * 3600), min_size=1, max_size=40),
    restart_at=st.integers(0, 40),
    ack_after=st.one_of(st.none(), st.integers(0, 4 * 3600)),
    repeat=st.sampled_from([None, 300, 900]),
)
def test_any_schedule_of_worker_passes_sends_each_key_once_and_nothing_after_ack(
    checks: list[int], restart_at: int, ack_after: int | None, repeat: int | None
) -> None:
    policy = three_tiers(repeat=repeat, max_repeats=5)
    acked = None if ack_after is None else OPENED + timedelta(seconds=ack_after)
    outbox = Outbox()
    for i, offset in enumerate(sorted(checks)):
        now = OPENED + timedelta(seconds=offset)
        if i == restart_at:
            outbox = Outbox(rows=dict(outbox.rows))  # a new worker, same database
        due = tick(policy, outbox, now, acked if acked is not None and acked <= now else None)
        assert all(d.due_at <= now for d in due)
        if acked is not None and acked <= now:
            assert due == []
    assert outbox.duplicates == 0
    if acked is not None:
        assert all(row.due_at < acked for row in outbox.rows.values())
