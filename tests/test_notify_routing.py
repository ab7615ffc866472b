"""Routing: contact scope, rules by severity/tier/site/customer and local time, quiet hours that
critical alerts ignore, and the per-recipient rate limit with a digest for low severity."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldchain.domain import Severity
from coldchain.errors import ValidationError
from notify import (
    AlertScope,
    Channel,
    Contact,
    RateLimit,
    RecentSend,
    RoutingRule,
    TimeWindow,
    Verdict,
    contacts_for_alert,
    gate_notification,
    route_alert,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
NIGHT = TimeWindow(time(22, 0), time(6, 0))

# 2026-01-14 is a Wednesday; Berlin is UTC+1 and New York UTC-5 in January.
WINTER_2130_UTC = datetime(2026, 1, 14, 21, 30, tzinfo=UTC)


def contact(cid: str, **kw: object) -> Contact:
    fields: dict[str, object] = {"name": cid.title(), "phone": "+4915112345678"}
    fields.update(kw)
    return Contact(id=cid, **fields)  # type: ignore[arg-type]


def test_time_window_crossing_midnight_belongs_to_its_start_day() -> None:
    fridays = TimeWindow(time(22, 0), time(6, 0), days=frozenset({4}))
    assert fridays.contains(datetime(2026, 1, 16, 23, 0))  # Friday night
    assert fridays.contains(datetime(2026, 1, 17, 5, 59))  # early Saturday, Friday's window
    assert not fridays.contains(datetime(2026, 1, 17, 6, 0))
    assert not fridays.contains(datetime(2026, 1, 17, 23, 0))  # Saturday night
    assert not fridays.contains(datetime(2026, 1, 16, 5, 0))  # Friday early = Thursday's window
    office = TimeWindow(time(8, 0), time(17, 0), days=frozenset(range(5)))
    assert office.contains(datetime(2026, 1, 14, 8, 0))
    assert not office.contains(datetime(2026, 1, 14, 17, 0))
    assert not office.contains(datetime(2026, 1, 17, 10, 0))  # Saturday
    with pytest.raises(ValidationError):
        TimeWindow(time(1), time(2), days=frozenset({7}))


def test_quiet_hours_are_local_to_each_contact() -> None:
    berlin = contact("anna", timezone=BERLIN, quiet_hours=NIGHT)
    new_york = contact("bob", timezone=NEW_YORK, quiet_hours=NIGHT)
    limit = RateLimit()
    at_berlin = gate_notification(
        contact=berlin, channel=Channel.SMS, severity=Severity.ALARM, recent=[], limit=limit,
        now=WINTER_2130_UTC,
    )  # fmt: skip
    # 22:30 in Berlin: quiet, held for the end of quiet hours, 06:00 Berlin = 05:00 UTC.
    assert at_berlin.verdict is Verdict.DIGEST and at_berlin.reason == "quiet_hours"
    assert at_berlin.not_before == datetime(2026, 1, 15, 5, 0, tzinfo=UTC)
    # 16:30 in New York: not quiet.
    at_new_york = gate_notification(
        contact=new_york, channel=Channel.SMS, severity=Severity.ALARM, recent=[], limit=limit,
        now=WINTER_2130_UTC,
    )  # fmt: skip
    assert at_new_york.verdict is Verdict.SEND


def test_critical_ignores_quiet_hours_and_the_rate_limit() -> None:
    berlin = contact("anna", timezone=BERLIN, quiet_hours=NIGHT)
    flood = [
        RecentSend(at=WINTER_2130_UTC - timedelta(minutes=i), alert_id=i, severity=Severity.ALARM)
        for i in range(10)
    ]
    decision = gate_notification(
        contact=berlin, channel=Channel.SMS, severity=Severity.CRITICAL, recent=flood,
        limit=RateLimit(max_sends=3), now=WINTER_2130_UTC,
    )  # fmt: skip
    assert decision.verdict is Verdict.SEND and decision.reason == "critical"


def test_rate_limit_digests_low_severity_and_suppresses_the_rest_with_a_reason() -> None:
    anna = contact("anna")
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    limit = RateLimit(max_sends=3, window_s=900, digest_interval_s=1800)
    recent = [
        RecentSend(at=now - timedelta(minutes=m), alert_id=m, severity=Severity.WARNING) for m in (1, 5, 14)
    ]
    warning = gate_notification(
        contact=anna, channel=Channel.SMS, severity=Severity.WARNING, recent=recent, limit=limit,
        now=now,
    )  # fmt: skip
    assert warning.verdict is Verdict.DIGEST and warning.reason == "rate_limited"
    assert warning.not_before == now - timedelta(minutes=1) + timedelta(minutes=30)
    alarm = gate_notification(
        contact=anna, channel=Channel.SMS, severity=Severity.ALARM, recent=recent, limit=limit,
        now=now,
    )  # fmt: skip
    assert alarm.verdict is Verdict.SUPPRESS and alarm.reason == "rate_limited"
    # Sends older than the window no longer count.
    later = now + timedelta(minutes=2)
    old_enough = gate_notification(
        contact=anna, channel=Channel.SMS, severity=Severity.ALARM, recent=recent, limit=limit,
        now=later,
    )  # fmt: skip
    assert old_enough.verdict is Verdict.SEND


def test_recent_sends_are_read_only_when_the_rate_limit_is_weighed() -> None:
    """A critical alert in a flood is sent without reading the recipient's window; a warning
    reads it once, and is weighed against it."""
    anna = contact("anna")
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    reads: list[int] = []

    def window() -> list[RecentSend]:
        reads.append(1)
        return [
            RecentSend(at=now - timedelta(minutes=m), alert_id=m, severity=Severity.ALARM) for m in (1, 2, 3)
        ]

    limit = RateLimit(max_sends=3, window_s=900)
    critical = gate_notification(
        contact=anna, channel=Channel.SMS, severity=Severity.CRITICAL, recent=window, limit=limit, now=now,
    )  # fmt: skip
    assert critical.verdict is Verdict.SEND and reads == []
    alarm = gate_notification(
        contact=anna, channel=Channel.SMS, severity=Severity.ALARM, recent=window, limit=limit, now=now,
    )  # fmt: skip
    assert alarm.verdict is Verdict.SUPPRESS and alarm.reason == "rate_limited" and reads == [1]


def test_no_address_for_the_channel_is_suppressed_with_a_reason() -> None:
    no_mail = contact("anna")
    decision = gate_notification(
        contact=no_mail, channel=Channel.EMAIL, severity=Severity.CRITICAL, recent=[],
        limit=RateLimit(), now=WINTER_2130_UTC,
    )  # fmt: skip
    assert decision.verdict is Verdict.SUPPRESS and decision.reason == "no_email_address"


def test_quiet_hours_end_is_right_across_a_daylight_saving_change() -> None:
    # Night of 28-29 March 2026: Berlin moves from UTC+1 to UTC+2 at 02:00 local.
    berlin = contact("anna", timezone=BERLIN, quiet_hours=NIGHT)
    decision = gate_notification(
        contact=berlin, channel=Channel.SMS, severity=Severity.WARNING, recent=[],
        limit=RateLimit(), now=datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
    )  # fmt: skip
    assert decision.verdict is Verdict.DIGEST
    assert decision.not_before == datetime(2026, 3, 29, 4, 0, tzinfo=UTC)  # 06:00 CEST


def test_contact_scope_sites_or_routes_and_customer_filter() -> None:
    driver = contact("drv", roles=frozenset({"driver"}), routes=frozenset({"R7"}))
    dispatcher = contact(
        "disp", roles=frozenset({"dispatcher"}), sites=frozenset({"HAM"}), routes=frozenset({"R7"})
    )
    qa_acme = contact("qa", roles=frozenset({"qa_manager"}), customers=frozenset({"acme"}))
    everyone = contact("ops", roles=frozenset({"dispatcher"}))
    contacts = [driver, dispatcher, qa_acme, everyone]
    on_route = AlertScope(alert_id=1, severity=Severity.ALARM, route="R7", customer="acme")
    in_cold_room = AlertScope(alert_id=2, severity=Severity.ALARM, site="HAM", customer="globex")
    assert [c.id for c in contacts_for_alert(on_route, contacts)] == ["drv", "disp", "qa", "ops"]
    assert [c.id for c in contacts_for_alert(in_cold_room, contacts)] == ["disp", "ops"]


def test_route_alert_matches_rules_and_windows_in_local_time() -> None:
    anna = contact("anna", email="anna@example.com", timezone=BERLIN, roles=frozenset({"ops"}))
    bob = contact("bob", email="bob@example.com", timezone=NEW_YORK, roles=frozenset({"ops"}))
    carol = contact("carol", email="carol@example.com", roles=frozenset({"qa_manager"}),
                    customers=frozenset({"acme"}))  # fmt: skip
    rules = [
        RoutingRule(
            name="night-ops-sms",
            channels=(Channel.SMS,),
            roles=frozenset({"ops"}),
            severities=frozenset({Severity.ALARM, Severity.CRITICAL}),
            window=NIGHT,
        ),
        RoutingRule(
            name="acme-tier3-mail",
            channels=(Channel.EMAIL,),
            contact_ids=frozenset({"carol"}),
            tiers=frozenset({3}),
            customers=frozenset({"acme"}),
        ),
        RoutingRule(name="ops-mail", channels=(Channel.EMAIL,), roles=frozenset({"ops"})),
    ]
    contacts = [anna, bob, carol]
    alert = AlertScope(alert_id=5, severity=Severity.ALARM, shipment_id="SO-1", customer="acme")
    routed = route_alert(alert, contacts, rules, now=WINTER_2130_UTC)
    chosen = {(r.contact.id, r.channel, r.rule) for r in routed}
    # 22:30 in Berlin is night, 16:30 in New York is not.
    assert chosen == {
        ("anna", Channel.SMS, "night-ops-sms"),
        ("anna", Channel.EMAIL, "ops-mail"),
        ("bob", Channel.EMAIL, "ops-mail"),
    }
    tier3 = AlertScope(alert_id=5, severity=Severity.ALARM, shipment_id="SO-1", customer="acme", tier=3)
    assert ("carol", Channel.EMAIL, "acme-tier3-mail") in {
        (r.contact.id, r.channel, r.rule) for r in route_alert(tier3, contacts, rules,
                                                               now=WINTER_2130_UTC)
    }  # fmt: skip
    warning = AlertScope(alert_id=6, severity=Severity.WARNING)
    assert {r.rule for r in route_alert(warning, contacts, rules, now=WINTER_2130_UTC)} == {"ops-mail"}
    with pytest.raises(ValidationError):
        route_alert(alert, contacts, rules, now=datetime(2026, 1, 14, 21, 30))


def test_contact_validation() -> None:
    with pytest.raises(ValidationError):
        contact("anna", phone="0151 123")
    with pytest.raises(ValidationError):
        contact("anna", timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        contact("anna", email="not-an-address")
    with pytest.raises(ValidationError):
        contact("has space")
    assert contact("anna", timezone=BERLIN).zone == ZoneInfo(BERLIN)


@given(
    start=st.times(), end=st.times(), moment=st.datetimes(), days=st.frozensets(
        st.integers(0, 6), min_size=1)
)  # fmt: skip
def test_window_end_is_after_the_moment_and_outside_is_consistent(
    start: time, end: time, moment: datetime, days: frozenset[int]
) -> None:
    window = TimeWindow(start, end, days=days)
    zone = ZoneInfo(BERLIN)
    local = moment.replace(tzinfo=zone)
    end_at = window.ends_after(local)
    assert end_at > local
    assert end_at - local <= timedelta(days=1, hours=2)
