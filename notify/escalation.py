"""Escalation policies and the pure function that says which notifications are due now.

The truth lives in the database: when the alert opened, when (if ever) it was acknowledged, and
which (tier, repeat, contact, channel) notifications were already recorded in the outbox. A
worker, new or restarted, recomputes `due_notifications` from that truth and enqueues exactly
what is missing; each item's idempotency key is deterministic, so enqueueing twice is harmless
(the outbox's unique key refuses the second row). `next_due_at` tells the scheduler when to look
again.

Semantics:
- Tier n (counted from 1) is due `delay_s` after the alert opened; with `repeat_interval_s` it
  repeats every interval after that, up to `max_repeats`, for every tier reached.
- Once acknowledged, nothing more is due, including tiers whose time had come but which were not
  yet recorded (a late escalation after someone answered only adds noise).
- After an outage the schedule does not replay every missed repeat: for each (tier, contact,
  channel) only the latest due repeat is sent, if it has not been.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from coldchain.errors import ValidationError
from coldchain.notification import Channel
from notify.routing import AlertScope, Contact

__all__ = [
    "DueNotification",
    "EscalationPolicy",
    "EscalationTier",
    "SentKey",
    "due_notifications",
    "escalation_key",
    "example_policy",
    "next_due_at",
    "recipients_for_tier",
]

POLICY_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

SentKey = tuple[int, int, str, str]
"""(tier, repeat_index, contact_id, channel) of a notification already in the outbox."""


@dataclass(frozen=True, slots=True)
class EscalationTier:
    """Who is told, how, and how long after the alert opened."""

    delay_s: int
    channels: tuple[Channel, ...]
    roles: frozenset[str] = frozenset()
    contact_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ValidationError("a tier's delay cannot be negative", field="delay_s")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValidationError("a tier needs distinct channels", field="channels")
        if not self.roles and not self.contact_ids:
            raise ValidationError("a tier needs roles or contact ids", field="roles")


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """Tiers in order of delay, and how often to repeat until someone acknowledges.

    Pin the policy an alert started under (put a version in `id`, e.g. "night@3"): the id is
    part of every idempotency key.
    """

    id: str
    tiers: tuple[EscalationTier, ...]
    repeat_interval_s: int | None = None
    max_repeats: int | None = None

    def __post_init__(self) -> None:
        if not POLICY_ID_RE.match(self.id):
            raise ValidationError(f"policy id {self.id!r} is not valid", field="id")
        if not self.tiers:
            raise ValidationError("a policy needs at least one tier", field="tiers")
        delays = [t.delay_s for t in self.tiers]
        if delays != sorted(delays):
            raise ValidationError("tiers must be in order of delay", field="tiers")
        if self.repeat_interval_s is not None and self.repeat_interval_s < 60:
            raise ValidationError("repeat interval must be at least 60 s", field="repeat")
        if self.max_repeats is not None and self.max_repeats < 0:
            raise ValidationError("max_repeats cannot be negative", field="max_repeats")


def example_policy() -> EscalationPolicy:
    """Driver at once, dispatcher after 10 min, QA manager after 30 min; repeat every 15 min."""
    return EscalationPolicy(
        id="default",
        tiers=(
            EscalationTier(0, (Channel.SMS,), roles=frozenset({"driver"})),
            EscalationTier(600, (Channel.SMS, Channel.EMAIL), roles=frozenset({"dispatcher"})),
            EscalationTier(
                1800, (Channel.SMS, Channel.EMAIL, Channel.VOICE), roles=frozenset({"qa_manager"})
            ),
        ),
        repeat_interval_s=900,
        max_repeats=8,
    )


@dataclass(frozen=True, slots=True)
class DueNotification:
    """One notification the outbox must hold; `idempotency_key` is the same on every recompute."""

    alert_id: int
    tier: int
    repeat_index: int
    contact_id: str
    channel: Channel
    due_at: datetime
    idempotency_key: str

    @property
    def sent_key(self) -> SentKey:
        return (self.tier, self.repeat_index, self.contact_id, self.channel.value)


def escalation_key(
    alert_id: int, policy_id: str, tier: int, repeat_index: int, contact_id: str, channel: Channel
) -> str:
    """`esc:<alert>:<policy>:t<tier>:r<repeat>:<contact>:<channel>`, readable and stable."""
    return f"esc:{alert_id}:{policy_id}:t{tier}:r{repeat_index}:{contact_id}:{channel.value}"


def recipients_for_tier(
    tier: EscalationTier, contacts: Sequence[Contact], scope: AlertScope | None = None
) -> list[Contact]:
    """Contacts named by id, plus those having a tier role whose scope covers the alert."""
    chosen: dict[str, Contact] = {}
    for contact in contacts:
        named = contact.id in tier.contact_ids
        by_role = bool(contact.roles & tier.roles) and (scope is None or contact.covers(scope))
        if named or by_role:
            chosen.setdefault(contact.id, contact)
    return sorted(chosen.values(), key=lambda c: c.id)


def _check_times(opened: datetime, acknowledged: datetime | None, now: datetime) -> None:
    for name, moment in (
        ("alert_opened_at", opened),
        ("now", now),
        ("acknowledged_at", acknowledged),
    ):
        if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
            raise ValidationError(f"{name} needs a UTC offset", field=name)


def _latest_repeat(policy: EscalationPolicy, start: datetime, now: datetime) -> int | None:
    """The index of the latest schedule point of a tier at or before `now`, or None."""
    if now < start:
        return None
    if policy.repeat_interval_s is None:
        return 0
    k = int((now - start).total_seconds() // policy.repeat_interval_s)
    return k if policy.max_repeats is None else min(k, policy.max_repeats)


def _stopped(acknowledged: datetime | None, now: datetime) -> bool:
    return acknowledged is not None and acknowledged <= now


def due_notifications(
    policy: EscalationPolicy,
    *,
    alert_id: int,
    alert_opened_at: datetime,
    acknowledged_at: datetime | None,
    already_sent: Collection[SentKey],
    now: datetime,
    contacts: Sequence[Contact],
    scope: AlertScope | None = None,
) -> list[DueNotification]:
    """Notifications due at `now` and not yet in `already_sent`, in a deterministic order.

    `contacts` are the candidates (tiers pick from them by id or role; role picks must also
    cover `scope` when given). Pass the time escalation stopped as `acknowledged_at`.
    """
    _check_times(alert_opened_at, acknowledged_at, now)
    if _stopped(acknowledged_at, now):
        return []
    sent = {(int(t), int(r), str(c), str(ch)) for t, r, c, ch in already_sent}
    due: list[DueNotification] = []
    for number, tier in enumerate(policy.tiers, start=1):
        start = alert_opened_at + timedelta(seconds=tier.delay_s)
        k = _latest_repeat(policy, start, now)
        if k is None:
            continue
        due_at = start + timedelta(seconds=k * (policy.repeat_interval_s or 0))
        for contact in recipients_for_tier(tier, contacts, scope):
            for channel in tier.channels:
                if (number, k, contact.id, channel.value) in sent:
                    continue
                due.append(
                    DueNotification(
                        alert_id=alert_id,
                        tier=number,
                        repeat_index=k,
                        contact_id=contact.id,
                        channel=channel,
                        due_at=due_at,
                        idempotency_key=escalation_key(alert_id, policy.id, number, k, contact.id, channel),
                    )
                )
    due.sort(key=lambda d: (d.due_at, d.tier, d.repeat_index, d.contact_id, d.channel.value))
    return due


def next_due_at(
    policy: EscalationPolicy,
    *,
    alert_opened_at: datetime,
    acknowledged_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """The next schedule point strictly after `now` (when to run the check again), or None."""
    _check_times(alert_opened_at, acknowledged_at, now)
    if _stopped(acknowledged_at, now):
        return None
    best: datetime | None = None
    for tier in policy.tiers:
        start = alert_opened_at + timedelta(seconds=tier.delay_s)
        if now < start:
            candidate: datetime | None = start
        elif policy.repeat_interval_s is None:
            candidate = None
        else:
            elapsed = (now - start).total_seconds()
            k = math.floor(elapsed / policy.repeat_interval_s) + 1
            if policy.max_repeats is not None and k > policy.max_repeats:
                candidate = None
            else:
                candidate = start + timedelta(seconds=k * policy.repeat_interval_s)
        if candidate is not None and (best is None or candidate < best):
            best = candidate
    return best
