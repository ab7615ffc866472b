"""Request and response models of the notification routes: contacts, policies, routing rules,
and the delivery state of an alert's notifications."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any, Self
from zoneinfo import available_timezones

from annotated_types import Interval
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from api.schemas import LINE_PATTERN, Line, ShipmentId, whole_number
from coldchain.domain import Severity
from coldchain.notification import Channel
from storage.notify_directory import ContactRow, PolicyRow
from storage.notify_outbox import NotificationRow

CONTACT_ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
# The stored key appends `@version`, so a policy id itself carries no '@'.
POLICY_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,60}$"
CLOCK_PATTERN = r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$"
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
EMAIL_PATTERN = r"^[^\x00-\x20<>,;@\x7f]{1,64}@[^\x00-\x20<>,;@\x7f]{1,190}$"
URL_PATTERN = r"^https?://[^\x00-\x20\x7f]{1,2000}$"
NAME_PATTERN = r"^[A-Za-z0-9_.:@+-]{1,64}$"
# IANA names (`UTC`, `Europe/Berlin`, `America/Argentina/Salta`); which exist is checked on top.
ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]{0,30}(?:/[A-Za-z0-9_+-]{1,30}){0,2}$"
_ZONES = frozenset(available_timezones())
MAX_DELAY_S = 30 * 86_400

Weekday = Annotated[int, Interval(ge=0, le=6), BeforeValidator(whole_number)]
RepeatSeconds = Annotated[int, Interval(ge=60, le=MAX_DELAY_S), BeforeValidator(whole_number)]
DelaySeconds = Annotated[int, Interval(ge=0, le=MAX_DELAY_S), BeforeValidator(whole_number)]
Repeats = Annotated[int, Interval(ge=0, le=1000), BeforeValidator(whole_number)]
TierNumber = Annotated[int, Interval(ge=1, le=20), BeforeValidator(whole_number)]


def _zone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError(f"unknown time zone {value!r}")
    return value


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("items must be distinct")
    return values


def _clock(text: str) -> time:
    return time.fromisoformat(text)


Clock = Annotated[str, Field(pattern=CLOCK_PATTERN, examples=["22:00"], description="local wall-clock HH:MM")]
Weekdays = Annotated[list[Weekday], Field(min_length=1, max_length=7)]
Names = Annotated[list[Annotated[str, Field(pattern=NAME_PATTERN)]], Field(max_length=100)]
ContactIds = Annotated[list[Annotated[str, Field(pattern=CONTACT_ID_PATTERN)]], Field(max_length=100)]
ShipmentIds = Annotated[list[ShipmentId], Field(max_length=100)]
Channels = Annotated[
    list[Channel],
    Field(min_length=1, max_length=4, json_schema_extra={"uniqueItems": True}),
    AfterValidator(_unique),
]
TimeZone = Annotated[
    str,
    Field(
        pattern=ZONE_PATTERN,
        examples=["Europe/Berlin"],
        description="an IANA time zone name (422 when the server does not know it)",
    ),
    AfterValidator(_zone),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Recipients(_In):
    """Who is told: at least one role or one contact id."""

    roles: Names = []
    contact_ids: ContactIds = []

    @model_validator(mode="after")
    def _someone(self) -> Self:
        if not self.roles and not self.contact_ids:
            raise ValueError("needs roles or contact_ids")
        return self


class QuietHours(_In):
    start: Clock
    end: Clock
    days: Weekdays | None = None


class ContactBody(_In):
    """A contact as an admin writes it; the id comes from the path. A webhook needs its secret."""

    name: Line
    phone: Annotated[str, Field(pattern=E164_PATTERN, examples=["+4915100000002"])] | None = None
    email: Annotated[str, Field(pattern=EMAIL_PATTERN, examples=["dana@example.com"])] | None = None
    webhook_url: Annotated[str, Field(pattern=URL_PATTERN)] | None = None
    webhook_secret: Annotated[str, Field(min_length=16, max_length=512, pattern=LINE_PATTERN)] | None = None
    roles: Names = []
    sites: list[Line] = Field(default=[], max_length=100)
    routes: list[Line] = Field(default=[], max_length=100)
    customers: list[Line] = Field(default=[], max_length=100)
    timezone: TimeZone = "UTC"
    quiet_hours: QuietHours | None = None
    may_acknowledge: StrictBool = True

    @model_validator(mode="after")
    def _webhook_has_secret(self) -> Self:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("a webhook needs a secret of 16+ characters")
        return self

    def to_row(self, org_id: int, contact_id: str) -> ContactRow:
        quiet = self.quiet_hours
        return ContactRow(
            org_id=org_id,
            id=contact_id,
            name=self.name,
            phone=self.phone,
            email=self.email,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret,
            roles=tuple(self.roles),
            sites=tuple(self.sites),
            routes=tuple(self.routes),
            customers=tuple(self.customers),
            timezone=self.timezone,
            quiet_start=_clock(quiet.start) if quiet else None,
            quiet_end=_clock(quiet.end) if quiet else None,
            quiet_days=tuple(quiet.days) if quiet and quiet.days is not None else None,
            may_acknowledge=self.may_acknowledge,
        )


class QuietHoursOut(BaseModel):
    start: str
    end: str
    days: list[int] | None


class ContactOut(BaseModel):
    """A contact as the API shows it: everything but the webhook secret."""

    id: str
    name: str
    phone: str | None
    email: str | None
    webhook_url: str | None
    webhook_secret_set: bool
    roles: list[str]
    sites: list[str]
    routes: list[str]
    customers: list[str]
    timezone: str
    quiet_hours: QuietHoursOut | None
    may_acknowledge: bool
    disabled: bool


def contact_out(row: ContactRow) -> ContactOut:
    quiet = None
    if row.quiet_start is not None and row.quiet_end is not None:
        quiet = QuietHoursOut(
            start=row.quiet_start.strftime("%H:%M"),
            end=row.quiet_end.strftime("%H:%M"),
            days=list(row.quiet_days) if row.quiet_days is not None else None,
        )
    return ContactOut(
        id=row.id,
        name=row.name,
        phone=row.phone,
        email=row.email,
        webhook_url=row.webhook_url,
        webhook_secret_set=row.webhook_secret is not None,
        roles=list(row.roles),
        sites=list(row.sites),
        routes=list(row.routes),
        customers=list(row.customers),
        timezone=row.timezone,
        quiet_hours=quiet,
        may_acknowledge=row.may_acknowledge,
        disabled=row.disabled,
    )


class TierBody(_Recipients):
    delay_s: DelaySeconds = Field(description="seconds after the alert opened")
    channels: Channels


class PolicyBody(_In):
    """An escalation policy; each PUT stores a new version (alerts keep the one they started under).
    Tiers are listed in order of delay (422 otherwise)."""

    tiers: list[TierBody] = Field(min_length=1, max_length=20)
    repeat_interval_s: RepeatSeconds | None = None
    max_repeats: Repeats | None = None
    default: StrictBool = False


class TierOut(BaseModel):
    delay_s: int
    channels: list[Channel]
    roles: list[str]
    contact_ids: list[str]


class PolicyOut(BaseModel):
    id: str
    version: int
    key: str = Field(description="`id@version`, frozen onto the alerts that start under it")
    default: bool
    tiers: list[TierOut]
    repeat_interval_s: int | None
    max_repeats: int | None


def policy_out(row: PolicyRow) -> PolicyOut:
    return PolicyOut(
        id=row.id,
        version=row.version,
        key=row.key,
        default=row.is_default,
        tiers=[TierOut.model_validate(t) for t in row.body.get("tiers", [])],
        repeat_interval_s=row.body.get("repeat_interval_s"),
        max_repeats=row.body.get("max_repeats"),
    )


class WindowBody(_In):
    start: Clock
    end: Clock
    days: Weekdays | None = None


class RoutingRuleBody(_Recipients):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=LINE_PATTERN)]
    channels: Channels
    severities: Annotated[list[Severity], Field(max_length=3)] = []
    tiers: Annotated[list[TierNumber], Field(max_length=20)] = []
    shipment_ids: ShipmentIds = []
    sites: list[Line] = Field(default=[], max_length=100)
    customers: list[Line] = Field(default=[], max_length=100)
    window: WindowBody | None = None


class RoutingRulesBody(_In):
    """The ordered routing rules; names are unique (409 otherwise)."""

    rules: list[RoutingRuleBody] = Field(max_length=200)


class WindowOut(BaseModel):
    start: str
    end: str
    days: list[int] | None = None


class RoutingRuleOut(BaseModel):
    name: str
    channels: list[Channel]
    roles: list[str] = []
    contact_ids: list[str] = []
    severities: list[Severity] = []
    tiers: list[int] = []
    shipment_ids: list[str] = []
    sites: list[str] = []
    customers: list[str] = []
    window: WindowOut | None = None


def routing_rule_out(name: str, body: dict[str, Any]) -> RoutingRuleOut:
    return RoutingRuleOut.model_validate({"name": name, **body})


class NotificationOut(BaseModel):
    id: int
    idempotency_key: str
    kind: str
    alert_id: int | None
    tier: int | None
    repeat: int | None
    contact_id: str | None
    channel: str
    state: str
    reason: str | None = Field(description="why it was held or skipped")
    attempts: int
    due_at: datetime
    next_attempt_at: datetime
    provider_id: str | None
    provider_status: str | None
    last_error: str | None
    digest_id: int | None
    created_at: datetime
    sent_at: datetime | None
    final_at: datetime | None
    failed: bool


def notification_out(row: NotificationRow) -> NotificationOut:
    return NotificationOut(
        id=row.id,
        idempotency_key=row.idempotency_key,
        kind=row.kind,
        alert_id=row.alert_id,
        tier=row.tier,
        repeat=row.repeat_index,
        contact_id=row.contact_id,
        channel=row.channel,
        state=row.state,
        reason=row.gate_reason,
        attempts=row.attempts,
        due_at=row.due_at,
        next_attempt_at=row.next_attempt_at,
        provider_id=row.provider_id,
        provider_status=row.provider_status,
        last_error=row.last_error,
        digest_id=row.digest_id,
        created_at=row.created_at,
        sent_at=row.sent_at,
        final_at=row.final_at,
        failed=row.state in ("failed", "undelivered"),
    )


class AlertNotifications(BaseModel):
    alert_id: int
    notifications: list[NotificationOut]
    failed: int
    pending: int

