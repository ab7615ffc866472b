"""Turns alerts, escalation policies, routing rules and contacts into outbox rows.

Each run reads the truth from PostgreSQL (the alert, the policy it started under, which
notifications the outbox already holds), asks the pure `due_notifications` what is missing, gates
each item (quiet hours, rate limit, digest) and inserts it under its deterministic idempotency
key. Running twice, or after a crash at any point, inserts nothing twice.

Routing rules refine escalation tiers: where rules match an alert at tier n (a rule without
`tiers` matches every tier), the recipients and channels of tier n are the ones the rules pick at
that moment (so a night-time rule picks the night dispatcher); where none match, the tier's own
roles and contact ids apply. Escalation stops when the alert leaves `open` (acknowledged,
resolved or closed); rows not yet sent are then cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from functools import partial
from typing import Any

import psycopg

from coldchain.domain import AlertState, Severity
from coldchain.errors import ColdchainError, ValidationError
from coldchain.notification import Channel, NotificationKind, NotificationState
from notify.escalation import (
    EscalationPolicy,
    EscalationTier,
    due_notifications,
    example_policy,
    next_due_at,
)
from notify.routing import (
    AlertScope,
    Contact,
    RateLimit,
    RecentSend,
    RoutingRule,
    TimeWindow,
    Verdict,
    gate_notification,
    route_alert,
)
from storage import escalation_plans, notify_directory, notify_outbox
from storage.notify_directory import ContactRow
from storage.notify_outbox import OutboxItem

__all__ = [
    "PlanOutcome",
    "Planner",
    "contact_from_row",
    "policy_from_body",
    "policy_to_body",
    "route_of",
    "routing_rule_from_body",
    "routing_rule_to_body",
]

log = logging.getLogger(__name__)

BUILTIN_POLICY_KEY = "default"
SWEEP_BATCH = 500


# -- stored bodies <-> pure types -------------------------------------------------------------


def _strings(body: Mapping[str, Any], name: str) -> frozenset[str]:
    value = body.get(name) or []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{name} must be a list of strings", field=name)
    return frozenset(value)


def _channels(body: Mapping[str, Any]) -> tuple[Channel, ...]:
    raw = body.get("channels") or []
    try:
        return tuple(Channel(c) for c in raw)
    except ValueError:
        raise ValidationError("channels must be sms, voice, email or webhook", field="channels") from None


def _int(body: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer", field=name)
    return value


def policy_from_body(policy_key: str, body: Mapping[str, Any]) -> EscalationPolicy:
    """An EscalationPolicy from its stored JSON body; `policy_key` (`id@version`) is its id."""
    tiers_raw = body.get("tiers")
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise ValidationError("a policy needs a list of tiers", field="tiers")
    tiers = []
    for raw in tiers_raw:
        if not isinstance(raw, Mapping):
            raise ValidationError("each tier must be an object", field="tiers")
        tiers.append(
            EscalationTier(
                delay_s=_int(raw, "delay_s", 0) or 0,
                channels=_channels(raw),
                roles=_strings(raw, "roles"),
                contact_ids=_strings(raw, "contact_ids"),
            )
        )
    return EscalationPolicy(
        id=policy_key,
        tiers=tuple(tiers),
        repeat_interval_s=_int(body, "repeat_interval_s"),
        max_repeats=_int(body, "max_repeats"),
    )


def policy_to_body(policy: EscalationPolicy) -> dict[str, Any]:
    return {
        "tiers": [
            {
                "delay_s": t.delay_s,
                "channels": [c.value for c in t.channels],
                "roles": sorted(t.roles),
                "contact_ids": sorted(t.contact_ids),
            }
            for t in policy.tiers
        ],
        "repeat_interval_s": policy.repeat_interval_s,
        "max_repeats": policy.max_repeats,
    }


def _clock(text: Any, name: str) -> time:
    try:
        return time.fromisoformat(str(text))
    except ValueError:
        raise ValidationError(f"{name} must be a time like 22:00", field=name) from None


def _window(raw: Any) -> TimeWindow | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValidationError("window must be an object with start and end", field="window")
    days = raw.get("days")
    return TimeWindow(
        start=_clock(raw.get("start"), "window.start"),
        end=_clock(raw.get("end"), "window.end"),
        days=frozenset(int(d) for d in days) if days is not None else frozenset(range(7)),
    )


def routing_rule_from_body(name: str, body: Mapping[str, Any]) -> RoutingRule:
    """A RoutingRule from its stored JSON body."""
    try:
        severities = frozenset(Severity(s) for s in body.get("severities") or [])
    except ValueError:
        raise ValidationError("severities must be warning, alarm or critical", field="severities") from None
    tiers = body.get("tiers") or []
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tiers):
        raise ValidationError("tiers must be integers from 1", field="tiers")
    return RoutingRule(
        name=name,
        channels=_channels(body),
        roles=_strings(body, "roles"),
        contact_ids=_strings(body, "contact_ids"),
        severities=severities,
        tiers=frozenset(tiers),
        shipment_ids=_strings(body, "shipment_ids"),
        sites=_strings(body, "sites"),
        customers=_strings(body, "customers"),
        window=_window(body.get("window")),
    )


def routing_rule_to_body(rule: RoutingRule) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channels": [c.value for c in rule.channels],
        "roles": sorted(rule.roles),
        "contact_ids": sorted(rule.contact_ids),
        "severities": sorted(s.value for s in rule.severities),
        "tiers": sorted(rule.tiers),
        "shipment_ids": sorted(rule.shipment_ids),
        "sites": sorted(rule.sites),
        "customers": sorted(rule.customers),
    }
    if rule.window is not None:
        body["window"] = {
            "start": rule.window.start.strftime("%H:%M"),
            "end": rule.window.end.strftime("%H:%M"),
            "days": sorted(rule.window.days),
        }
    return body


def contact_from_row(row: ContactRow) -> Contact:
    """The routing Contact of a stored contact (quiet hours as a TimeWindow)."""
    quiet = None
    if row.quiet_start is not None and row.quiet_end is not None:
        days = frozenset(row.quiet_days) if row.quiet_days is not None else frozenset(range(7))
        quiet = TimeWindow(start=row.quiet_start, end=row.quiet_end, days=days)
    return Contact(
        id=row.id,
        name=row.name,
        phone=row.phone,
        email=row.email,
        webhook_url=row.webhook_url,
        roles=frozenset(row.roles),
        sites=frozenset(row.sites),
        routes=frozenset(row.routes),
        customers=frozenset(row.customers),
        timezone=row.timezone,
        quiet_hours=quiet,
    )


def route_of(origin: str | None, destination: str | None) -> str | None:
    """A shipment's route as contacts name it: `origin>destination`."""
    if origin is None or destination is None:
        return None
    return f"{origin}>{destination}"


# -- the planner ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    """What one planning run of an alert did."""

    alert_id: int
    enqueued: int = 0
    next_check_at: datetime | None = None
    stopped: bool = False
    cancelled: int = 0


@dataclass(slots=True)
class PlannerStats:
    alerts_planned: int = 0
    enqueued: int = 0
    cancelled: int = 0
    errors: int = 0


@dataclass(slots=True)
class Planner:
    """Plans alerts into the outbox. Stateless between runs: the database holds everything."""

    rate_limit: RateLimit = field(default_factory=RateLimit)
    lookback: timedelta = timedelta(days=1)
    stats: PlannerStats = field(default_factory=PlannerStats)

    def plan_alert(self, conn: psycopg.Connection, alert_id: int, *, now: datetime) -> PlanOutcome:
        """Enqueue what is due for one alert now and record when to look again (one transaction)."""
        with conn.transaction():
            outcome = self._plan(conn, alert_id, now)
            if outcome.enqueued:
                notify_outbox.wake_workers(conn)
        self.stats.alerts_planned += 1
        self.stats.enqueued += outcome.enqueued
        self.stats.cancelled += outcome.cancelled
        return outcome

    def sweep(self, conn: psycopg.Connection, *, now: datetime) -> list[PlanOutcome]:
        """Plan every alert whose next check is due, and open alerts not planned yet."""
        done: list[PlanOutcome] = []
        seen: set[int] = set()
        while True:
            with conn.transaction():
                ids = [
                    i
                    for i in escalation_plans.alerts_to_plan(
                        conn, now=now, lookback=self.lookback, limit=SWEEP_BATCH
                    )
                    if i not in seen
                ]
            if not ids:
                return done  # a batch of only failed alerts ends the sweep too
            for alert_id in ids:
                seen.add(alert_id)
                try:
                    done.append(self.plan_alert(conn, alert_id, now=now))
                except (ColdchainError, psycopg.DataError, psycopg.IntegrityError) as exc:
                    self.stats.errors += 1
                    log.error("planning alert %d failed: %s", alert_id, exc)

    def _plan(self, conn: psycopg.Connection, alert_id: int, now: datetime) -> PlanOutcome:
        facts = escalation_plans.alert_facts(conn, alert_id)
        pinned = notify_directory.default_policy(conn, org=facts.org_id)
        key, body = (
            (pinned.key, pinned.body)
            if pinned is not None
            else (BUILTIN_POLICY_KEY, policy_to_body(example_policy()))
        )
        plan = escalation_plans.lock_plan(
            conn, alert_id=alert_id, org=facts.org_id, policy_key=key, policy=body, now=now
        )
        if facts.stopped_at is not None:
            cancelled = notify_outbox.cancel_unsent(conn, now=now, alert_id=alert_id)
            escalation_plans.save_plan(
                conn, alert_id=alert_id, next_check_at=None, stopped_at=min(facts.stopped_at, now), now=now
            )
            withdrawn = facts.state is AlertState.WITHDRAWN
            enqueued = self._withdrawal_notices(conn, facts, now) if withdrawn else 0
            return PlanOutcome(alert_id, enqueued=enqueued, stopped=True, cancelled=cancelled)
        policy = policy_from_body(plan.policy_key, plan.policy)
        contacts = self._contacts(notify_directory.list_contacts(conn, org=facts.org_id))
        rules = [
            routing_rule_from_body(n, b)
            for n, b in notify_directory.list_routing_rules(conn, org=facts.org_id)
        ]
        scope = AlertScope(
            alert_id=alert_id,
            severity=facts.severity,
            shipment_id=facts.shipment_id,
            site=facts.origin,
            route=route_of(facts.origin, facts.destination),
        )
        effective, allowed = _routed_policy(policy, scope, contacts, rules, now)
        due = due_notifications(
            effective,
            alert_id=alert_id,
            alert_opened_at=facts.opened_at,
            acknowledged_at=None,
            already_sent=notify_outbox.sent_keys(conn, alert_id),
            now=now,
            contacts=contacts,
            scope=scope,
        )
        by_id = {c.id: c for c in contacts}
        enqueued = 0
        for item in due:
            pairs = allowed.get(item.tier)
            if pairs is not None and (item.contact_id, item.channel) not in pairs:
                continue
            contact = by_id[item.contact_id]
            decision = gate_notification(
                contact=contact,
                channel=item.channel,
                severity=scope.severity,
                recent=partial(self._recent_sends, conn, facts.org_id, contact.id, item.channel, now),
                limit=self.rate_limit,
                now=now,
            )
            state = {
                Verdict.SEND: NotificationState.PENDING,
                Verdict.DIGEST: NotificationState.HELD,
                Verdict.SUPPRESS: NotificationState.SUPPRESSED,
            }
            enqueued += notify_outbox.enqueue(
                conn,
                [
                    OutboxItem(
                        org_id=facts.org_id,
                        idempotency_key=item.idempotency_key,
                        alert_id=alert_id,
                        channel=item.channel,
                        recipient=contact.address_for(item.channel) or "-",
                        state=state[decision.verdict],
                        due_at=item.due_at,
                        next_attempt_at=decision.not_before or now,
                        tier=item.tier,
                        repeat_index=item.repeat_index,
                        contact_id=contact.id,
                        severity=scope.severity,
                        gate_reason=decision.reason,
                    )
                ],
                now=now,
            )
        next_check = next_due_at(policy, alert_opened_at=facts.opened_at, acknowledged_at=None, now=now)
        escalation_plans.save_plan(
            conn, alert_id=alert_id, next_check_at=next_check, stopped_at=None, now=now
        )
        if enqueued:
            log.info("alert %d: %d notification(s) enqueued", alert_id, enqueued, extra={"alert": alert_id})
        return PlanOutcome(alert_id, enqueued=enqueued, next_check_at=next_check)

    def _recent_sends(
        self, conn: psycopg.Connection, org: int, contact_id: str, channel: Channel, now: datetime
    ) -> list[RecentSend]:
        return [
            RecentSend(at=sent.created_at, alert_id=sent.alert_id, severity=Severity(sent.severity))
            for sent in notify_outbox.recent_sends(
                conn,
                org=org,
                contact_id=contact_id,
                channel=channel.value,
                since=now - timedelta(seconds=self.rate_limit.window_s),
            )
        ]

    @staticmethod
    def _withdrawal_notices(
        conn: psycopg.Connection, facts: escalation_plans.AlertFacts, now: datetime
    ) -> int:
        """Tell everyone the alert reached that late data withdrew it, once each, on the channel
        that reached them (a voice call is answered by a text: no one is woken to hear "never mind")."""
        items = []
        for told in notify_outbox.told_recipients(conn, facts.id):
            channel = Channel.SMS if told.channel == Channel.VOICE.value else Channel(told.channel)
            items.append(
                OutboxItem(
                    org_id=facts.org_id,
                    idempotency_key=f"withdrawn:{facts.id}:{told.contact_id}:{channel.value}",
                    alert_id=facts.id,
                    channel=channel,
                    recipient=told.recipient,
                    state=NotificationState.PENDING,
                    due_at=now,
                    next_attempt_at=now,
                    kind=NotificationKind.WITHDRAWAL,
                    contact_id=told.contact_id,
                    severity=facts.severity,
                )
            )
        enqueued = notify_outbox.enqueue(conn, items, now=now)
        if enqueued:
            log.info(
                "alert %d withdrawn: %d notice(s) enqueued", facts.id, enqueued, extra={"alert": facts.id}
            )
        return enqueued

    @staticmethod
    def _contacts(rows: Sequence[ContactRow]) -> list[Contact]:
        contacts = []
        for row in rows:
            try:
                contacts.append(contact_from_row(row))
            except ValidationError as exc:
                # One bad contact must not silence everyone else's notifications.
                log.error("contact %s skipped: %s", row.id, exc)
        return contacts


def _routed_policy(
    policy: EscalationPolicy,
    scope: AlertScope,
    contacts: Sequence[Contact],
    rules: Sequence[RoutingRule],
    now: datetime,
) -> tuple[EscalationPolicy, dict[int, set[tuple[str, Channel]]]]:
    """The policy with each tier's recipients replaced by what the routing rules pick for it.

    Returns the policy (same id, so keys stay stable) and, per replaced tier, the (contact,
    channel) pairs allowed (a tier's channels are the union over its recipients).
    """
    if not rules:
        return policy, {}
    tiers = []
    allowed: dict[int, set[tuple[str, Channel]]] = {}
    for number, tier in enumerate(policy.tiers, start=1):
        routed = route_alert(replace(scope, tier=number), contacts, rules, now=now)
        if not routed:
            tiers.append(tier)
            continue
        channels = tuple(dict.fromkeys(r.channel for r in routed))
        tiers.append(
            EscalationTier(
                delay_s=tier.delay_s,
                channels=channels,
                contact_ids=frozenset(r.contact.id for r in routed),
            )
        )
        allowed[number] = {(r.contact.id, r.channel) for r in routed}
    return replace(policy, tiers=tuple(tiers)), allowed
