"""Who hears about an alert and when: contacts, routing rules, quiet hours, rate limit, digest.

Everything here is pure: the caller passes the contacts, the rules, what was sent recently and
the time, and gets decisions back, each with a reason the outbox records.

Scope of a contact: `sites` and `routes` are places (a contact with either covers an alert at one
of its sites OR on one of its routes); `customers` is a filter on top (when set, the alert's
customer must be one of them). A contact with no scope at all covers every alert.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from coldchain.domain import Severity
from coldchain.errors import ValidationError
from coldchain.notification import Channel
from notify.delivery import validate_e164

__all__ = [
    "AlertScope",
    "Contact",
    "GateDecision",
    "RateLimit",
    "RecentSend",
    "RoutedRecipient",
    "RoutingRule",
    "TimeWindow",
    "Verdict",
    "contacts_for_alert",
    "gate_notification",
    "route_alert",
]

CONTACT_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
ALL_DAYS: Final = frozenset(range(7))


def _aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(f"{name} needs a UTC offset", field=name)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window of local wall-clock time, e.g. 22:00-06:00 (it may cross midnight).

    `days` are the weekdays (0 = Monday) on which the window starts; a window crossing midnight
    belongs to the day it started. `start == end` means the whole day.
    """

    start: time
    end: time
    days: frozenset[int] = ALL_DAYS

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValidationError("window times are local wall-clock times, without an offset")
        if not self.days or not self.days <= ALL_DAYS:
            raise ValidationError("window days must be weekdays 0 (Monday) to 6", field="days")

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains(self, local: datetime) -> bool:
        """Whether `local` (a wall-clock time in the contact's zone) falls in the window."""
        clock = local.time().replace(tzinfo=None)
        weekday = local.weekday()
        if self.start == self.end:
            return weekday in self.days
        if not self.crosses_midnight:
            return weekday in self.days and self.start <= clock < self.end
        if clock >= self.start:
            return weekday in self.days
        return clock < self.end and (weekday - 1) % 7 in self.days

    def ends_after(self, local: datetime) -> datetime:
        """The first end of the window after `local`, in the same zone as `local`."""
        candidate = datetime.combine(local.date(), self.end, tzinfo=local.tzinfo)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.end, tzinfo=local.tzinfo)
        return candidate


@dataclass(frozen=True, slots=True)
class Contact:
    """A person (or team inbox) who can be notified, with where and what they look after."""

    id: str
    name: str
    phone: str | None = None
    email: str | None = None
    webhook_url: str | None = None
    roles: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    customers: frozenset[str] = frozenset()
    timezone: str = "UTC"
    quiet_hours: TimeWindow | None = None
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not CONTACT_ID_RE.match(self.id):
            raise ValidationError(f"contact id {self.id!r} is not valid", field="id")
        if self.phone is not None:
            validate_e164(self.phone)
        if self.email is not None and ("@" not in self.email or any(ch in self.email for ch in " \r\n<>,;")):
            raise ValidationError(f"not an e-mail address: {self.email!r}", field="email")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(f"unknown time zone {self.timezone!r}", field="timezone") from None
        object.__setattr__(self, "zone", zone)

    def address_for(self, channel: Channel) -> str | None:
        """Where this contact receives `channel`, or None when they have no such address."""
        if channel in (Channel.SMS, Channel.VOICE):
            return self.phone
        if channel is Channel.EMAIL:
            return self.email
        return self.webhook_url

    def local_time(self, moment: datetime) -> datetime:
        _aware(moment, "now")
        return moment.astimezone(self.zone)

    def covers(self, alert: AlertScope) -> bool:
        """Whether the alert falls in this contact's sites/routes and customers."""
        if self.customers and alert.customer not in self.customers:
            return False
        if not self.sites and not self.routes:
            return True
        return (alert.site in self.sites) or (alert.route in self.routes)


@dataclass(frozen=True, slots=True)
class AlertScope:
    """The facts about an alert that routing decides on; `tier` is the escalation tier reached."""

    alert_id: int
    severity: Severity
    shipment_id: str | None = None
    site: str | None = None
    route: str | None = None
    customer: str | None = None
    tier: int = 1

    def __post_init__(self) -> None:
        if self.tier < 1:
            raise ValidationError("escalation tiers count from 1", field="tier")


def contacts_for_alert(alert: AlertScope, contacts: Iterable[Contact]) -> list[Contact]:
    """The contacts whose scope covers the alert (the candidates for escalation tiers)."""
    return [c for c in contacts if c.covers(alert)]


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Picks recipients for alerts that match it.

    Empty match sets mean "any". `window` is checked in each recipient's own time zone, so "the
    night dispatcher" is whoever is at night where they are. Recipients are the contacts having
    one of `roles` or listed in `contact_ids`, and only those whose scope covers the alert.
    """

    name: str
    channels: tuple[Channel, ...]
    roles: frozenset[str] = frozenset()
    contact_ids: frozenset[str] = frozenset()
    severities: frozenset[Severity] = frozenset()
    tiers: frozenset[int] = frozenset()
    shipment_ids: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()
    customers: frozenset[str] = frozenset()
    window: TimeWindow | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValidationError("a routing rule needs a name", field="name")
        if not self.channels:
            raise ValidationError(f"rule {self.name!r} has no channel", field="channels")
        if not self.roles and not self.contact_ids:
            raise ValidationError(f"rule {self.name!r} names no recipient", field="roles")

    def matches(self, alert: AlertScope) -> bool:
        """Whether the alert's severity, tier, shipment, site and customer fit the rule."""
        return (
            (not self.severities or alert.severity in self.severities)
            and (not self.tiers or alert.tier in self.tiers)
            and (not self.shipment_ids or alert.shipment_id in self.shipment_ids)
            and (not self.sites or alert.site in self.sites)
            and (not self.customers or alert.customer in self.customers)
        )

    def selects(self, contact: Contact) -> bool:
        return contact.id in self.contact_ids or bool(contact.roles & self.roles)


@dataclass(frozen=True, slots=True)
class RoutedRecipient:
    """One (contact, channel) to notify, with the rule that chose it."""

    contact: Contact
    channel: Channel
    rule: str


def route_alert(
    alert: AlertScope,
    contacts: Sequence[Contact],
    rules: Sequence[RoutingRule],
    *,
    now: datetime,
) -> list[RoutedRecipient]:
    """Recipients for the alert at `now`: first matching rule wins per (contact, channel)."""
    _aware(now, "now")
    chosen: dict[tuple[str, Channel], RoutedRecipient] = {}
    for rule in rules:
        if not rule.matches(alert):
            continue
        for contact in contacts:
            if not rule.selects(contact) or not contact.covers(alert):
                continue
            if rule.window is not None and not rule.window.contains(contact.local_time(now)):
                continue
            for channel in rule.channels:
                chosen.setdefault((contact.id, channel), RoutedRecipient(contact, channel, rule.name))
    return list(chosen.values())


class Verdict(StrEnum):
    """What to do with one notification for one recipient."""

    SEND = "send"
    DIGEST = "digest"
    SUPPRESS = "suppress"


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The verdict, the reason the outbox records, and for a digest the earliest sending time."""

    verdict: Verdict
    reason: str
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `max_sends` per recipient and channel in `window_s`; over it, `digest_severities`
    are folded into a digest and others suppressed. Critical alerts pass regardless."""

    max_sends: int = 5
    window_s: int = 900
    digest_severities: frozenset[Severity] = frozenset({Severity.WARNING})
    digest_interval_s: int = 1800

    def __post_init__(self) -> None:
        if self.max_sends < 1 or self.window_s < 1 or self.digest_interval_s < 1:
            raise ValidationError("rate limit figures must be positive")


@dataclass(frozen=True, slots=True)
class RecentSend:
    """A notification already sent to the recipient on the channel (from the outbox)."""

    at: datetime
    alert_id: int
    severity: Severity


def gate_notification(
    *,
    contact: Contact,
    channel: Channel,
    severity: Severity,
    recent: Sequence[RecentSend] | Callable[[], Sequence[RecentSend]],
    limit: RateLimit,
    now: datetime,
) -> GateDecision:
    """Send now, fold into a digest, or suppress, for one recipient and channel.

    Order: no address -> suppress; critical -> send (ignores quiet hours and the rate limit);
    quiet hours -> digest at their end; over the rate limit -> digest for low severity (at the
    next digest slot), suppress otherwise (the alert stays visible and keeps escalating).
    `recent` may be a function that reads the sends: it is called only when the rate limit is
    weighed, so a critical alert in a flood does not read the recipient's whole window.
    """
    _aware(now, "now")
    if contact.address_for(channel) is None:
        return GateDecision(Verdict.SUPPRESS, f"no_{channel.value}_address")
    if severity is Severity.CRITICAL:
        return GateDecision(Verdict.SEND, "critical")
    local = contact.local_time(now)
    if contact.quiet_hours is not None and contact.quiet_hours.contains(local):
        return GateDecision(Verdict.DIGEST, "quiet_hours", contact.quiet_hours.ends_after(local))
    if callable(recent):
        recent = recent()
    since = now - timedelta(seconds=limit.window_s)
    in_window = sum(1 for r in recent if since < r.at <= now)
    if in_window < limit.max_sends:
        return GateDecision(Verdict.SEND, "within_rate_limit")
    if severity in limit.digest_severities:
        last = max(r.at for r in recent)
        slot = max(last + timedelta(seconds=limit.digest_interval_s), now)
        return GateDecision(Verdict.DIGEST, "rate_limited", slot)
    return GateDecision(Verdict.SUPPRESS, "rate_limited")
