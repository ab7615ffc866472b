"""Request and response models at the HTTP edge: the OpenAPI document is generated from them.

Every constraint a request must meet is carried by its model (patterns, bounds, enums), so the
document tells an integrator exactly what is accepted; the few rules JSON Schema cannot state
(a referenced record must exist, tiers in order of delay, ...) are listed in docs/contract.md.
Responses are built here from storage rows and domain objects: storage never shapes JSON.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Self

from annotated_types import Interval
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    model_validator,
)

from coldchain import master_data
from coldchain.alarm_profile import AlarmProfile, HumidityLimit, Limit, MktLimit
from coldchain.domain import (
    Alert,
    AlertState,
    Device,
    DeviceAssignment,
    Disposition,
    Lot,
    Severity,
    Shipment,
    ShipmentLot,
)
from coldchain.errors import ValidationError
from coldchain.esignature import Meaning, Signature
from coldchain.gs1 import gtin_check_digit

# -- shared field types -----------------------------------------------------------------------

PG_INT = 2**31 - 1
# Ids and large counts stay within 2**53 so that every JSON parser (and JavaScript) holds them exactly.
MAX_SAFE_INT = 2**53 - 1

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SHIPMENT_ID_PATTERN = r"^[A-Za-z0-9_.:/-]{1,64}$"
# A path segment cannot carry '/', so a shipment is addressed in a path by an id without one.
SHIPMENT_SEGMENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
GTIN_PATTERN = r"^(?:[0-9]{8}|[0-9]{12,14})$"
# GS1 AI (10): 1 to 20 characters of character set 82; in a path without '/'.
LOT_PATTERN = r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}$"
LOT_SEGMENT_PATTERN = r"^[!\"%&'()*+,\-.0-9:;<=>?A-Z_a-z]{1,20}$"
PROFILE_ID_PATTERN = r"^[A-Za-z0-9_.+-]{1,64}$"
BUCKET_PATTERN = r"^(?:raw|[1-9][0-9]{0,5}[smhd])$"
# Free text: no control characters but tab and newline (PostgreSQL refuses NUL outright).
TEXT_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"
LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
# A reason: free text with at least one character that is not blank.
REASON_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x08\x0b-\x1f\x7f]*$"


def whole_number(value: object) -> object:
    """JSON integers as JSON Schema counts them: 196 and 196.0, never "196" or true."""
    if isinstance(value, bool | str):
        raise ValueError("must be a whole number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Whole numbers within bounds (the bounds come before the validator, so they reach the schema).
Count = Annotated[int, Interval(ge=0, le=PG_INT), BeforeValidator(whole_number)]
PositiveCount = Annotated[int, Interval(ge=1, le=PG_INT), BeforeValidator(whole_number)]
BigCount = Annotated[int, Interval(ge=0, le=MAX_SAFE_INT), BeforeValidator(whole_number)]
RowId = Annotated[int, Interval(ge=1, le=MAX_SAFE_INT), BeforeValidator(whole_number)]
IntervalSeconds = Annotated[int, Interval(ge=1, le=86_400), BeforeValidator(whole_number)]
Intervals = Annotated[int, Interval(ge=1, le=10_000), BeforeValidator(whole_number)]


_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _rfc3339(value: object) -> object:
    """A moment is written as RFC 3339 text (the offset is checked by AwareDatetime), never as a
    number that lax parsing would take for a Unix time."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time such as 2026-11-24T08:00:00Z")
    return value


def _iso_date(value: object) -> object:
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be a date such as 2027-05-31")
    return value


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
Day = Annotated[date, BeforeValidator(_iso_date)]


def _check_gtin(value: str) -> str:
    if gtin_check_digit(value[:-1]) != int(value[-1]):
        raise ValueError(f"GTIN {value!r} has a wrong check digit")
    return value


DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, examples=["TRK-0042-L1"])]
ShipmentId = Annotated[str, Field(pattern=SHIPMENT_ID_PATTERN, examples=["SO-1001"])]
Gtin = Annotated[
    str,
    Field(
        pattern=GTIN_PATTERN,
        examples=["09506000134352"],
        description="GTIN-8, -12, -13 or -14 with a valid mod-10 check digit (format `gtin`)",
        json_schema_extra={"format": "gtin"},
    ),
    AfterValidator(_check_gtin),
]
LotCode = Annotated[str, Field(pattern=LOT_PATTERN, examples=["A123"])]
ProfileId = Annotated[str, Field(pattern=PROFILE_ID_PATTERN, examples=["2-8C"])]
Line = Annotated[str, Field(min_length=1, max_length=200, pattern=LINE_PATTERN)]
Comment = Annotated[str, Field(max_length=4000, pattern=TEXT_PATTERN)]


class _In(BaseModel):
    """Request bodies: unknown keys are refused, so a misspelt field is never silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# -- errors -----------------------------------------------------------------------------------


class FieldProblem(_Out):
    field: str
    message: str


class ErrorBody(_Out):
    """Every error the API gives, whatever the status."""

    error: str = Field(examples=["ValidationError"], description="the kind of error")
    message: str = Field(description="what was wrong, for a person to read")
    field: str | None = Field(default=None, description="the request field at fault, when known")
    details: list[FieldProblem] | None = Field(
        default=None, description="every problem found, when a request broke several rules"
    )


# -- health -----------------------------------------------------------------------------------


class Health(_Out):
    status: str = Field(examples=["ok"])
    database: str = Field(examples=["ok"])
    version: str


# -- devices ----------------------------------------------------------------------------------


class DeviceCreate(_In):
    id: DeviceId
    kind: str = Field(
        default="logger", min_length=1, max_length=64, pattern=LINE_PATTERN, examples=["usb-logger"]
    )
    interval_s: IntervalSeconds = 60
    name: Line | None = None

    def to_domain(self, organization: str) -> Device:
        return Device(
            id=self.id, kind=self.kind, interval_s=self.interval_s, name=self.name, organization=organization
        )


class DeviceStatusOut(_Out):
    """The retained status the device last published (MQTT `.../status`); more keys may appear."""

    model_config = ConfigDict(extra="allow")
    state: str | None = Field(default=None, examples=["online"])
    battery: float | None = None
    queue: int | None = None
    fw: str | None = None
    applied_config: int | None = Field(default=None, description="the config version it applied")


class DeviceOut(_Out):
    id: str
    mqtt_name: str = Field(
        description="the device's MQTT username and topic level: its id in the default organization,"
        " `{organization}~{id}` in another"
    )
    kind: str
    interval_s: int
    name: str | None
    created_at: datetime
    last_seen_at: datetime | None
    last_seq: int | None
    clock_offset_ms: int | None
    status: DeviceStatusOut | None


# -- shipments --------------------------------------------------------------------------------


class LotIn(_In):
    gtin: Gtin
    lot: LotCode
    expiry: Day | None = None
    quantity: Count | None = None
    stability_budget_s: BigCount | None = None


class CalibrationOverrideIn(_In):
    """QA assigns a logger that is out of calibration anyway: why, under QA's e-signature."""

    reason: Annotated[str, Field(min_length=1, max_length=4000, pattern=REASON_PATTERN)]
    signature: SignatureIn = Field(
        description="QA's e-signature (21 CFR Part 11) with the meaning `approval`; the caller holds `qa`"
    )


class AssignmentIn(_In):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    id: DeviceId
    from_: Moment = Field(alias="from", description="RFC 3339 with an offset")
    to: Moment | None = Field(default=None, description="open-ended when null; after `from`")
    calibration_override: CalibrationOverrideIn | None = Field(
        default=None,
        description="only for a logger out of calibration on `from` (409 without it, 422 with it"
        " for a logger that is not)",
    )


class ShipmentCreate(_In):
    id: ShipmentId
    origin: Line | None = None
    destination: Line | None = None
    profile: ProfileId | None = Field(
        default=None, description="default: the products' default profile, else 2-8C"
    )
    lots: list[LotIn] = Field(default=[], max_length=1000)
    devices: list[AssignmentIn] = Field(default=[], max_length=1000)

    def to_domain(self, organization: str, *, profile: str) -> Shipment:
        return Shipment(
            id=self.id,
            origin=self.origin,
            destination=self.destination,
            profile=profile,
            organization=organization,
            lots=tuple(
                ShipmentLot(Lot(x.gtin, x.lot, x.expiry, x.stability_budget_s), x.quantity) for x in self.lots
            ),
            devices=tuple(DeviceAssignment(d.id, d.from_, d.to) for d in self.devices),
        )


class ShipmentLotOut(_Out):
    gtin: str
    lot: str
    expiry: date | None
    quantity: int | None


class CalibrationOverrideOut(_Out):
    id: int
    certificate_number: str | None = Field(description="the certificate that had lapsed")
    laboratory: str | None
    due_on: date | None
    status: Literal["overdue", "never"]
    reason: str
    overridden_by: str
    overridden_at: datetime
    signatures: list[SignatureOut] = Field(default=[], description="QA's e-signature of the override")


class AssignmentOut(_Out):
    id: str
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime | None
    calibration_override: CalibrationOverrideOut | None = Field(
        default=None, description="QA's signed override when the logger was out of calibration"
    )


class LegOut(_Out):
    seq: int
    origin_gln: str | None
    destination_gln: str | None
    carrier: str | None
    mode: str | None
    planned_departure: datetime | None
    planned_arrival: datetime | None
    actual_departure: datetime | None
    actual_arrival: datetime | None
    state: str


class ShipmentOut(_Out):
    id: str
    origin: str | None
    destination: str | None
    profile: str
    profile_version: int
    created_at: datetime
    lots: list[ShipmentLotOut]
    devices: list[AssignmentOut]
    shared_by: str | None = Field(default=None, description="a partner's view: the owning organization")
    scope: list[str] | None = Field(default=None, description="a partner's view: what was shared")
    origin_gln: str | None = None
    destination_gln: str | None = None
    carrier: str | None = None
    mode: str | None = None
    planned_departure: datetime | None = None
    planned_arrival: datetime | None = None
    actual_departure: datetime | None = None
    actual_arrival: datetime | None = None
    state: str = "planned"
    legs: list[LegOut] = []
    version: int = Field(default=1, description="the row version; the ETag is `\"v<version>\"`")
    updated_at: datetime | None = None
    erp_ref: str | None = Field(
        default=None,
        description="the ERP's own reference of the shipment (PUT /erp/shipments/{id}/reference); not in"
        " a partner's view",
    )


def shipment_out(
    shipment: Shipment,
    *,
    profile_version: int,
    created_at: datetime,
    overrides: dict[tuple[str, datetime], CalibrationOverrideOut] | None = None,
) -> ShipmentOut:
    return ShipmentOut(
        id=shipment.id,
        origin=shipment.origin,
        destination=shipment.destination,
        profile=shipment.profile,
        profile_version=profile_version,
        created_at=created_at,
        lots=[
            ShipmentLotOut(gtin=sl.lot.gtin, lot=sl.lot.lot, expiry=sl.lot.expiry, quantity=sl.quantity)
            for sl in shipment.lots
        ],
        devices=[
            AssignmentOut.model_validate({
                "id": a.device_id, "from": a.start, "to": a.end,
                "calibration_override": (overrides or {}).get((a.device_id, a.start)),
            })
            for a in shipment.devices
        ],
    )


class ProductProfileBody(_In):
    profile: ProfileId


class ProductProfileOut(_Out):
    gtin: str
    profile: str


# -- alarm profiles ---------------------------------------------------------------------------

LimitId = Annotated[str, Field(pattern=PROFILE_ID_PATTERN)]
Seconds = Count
Celsius = Annotated[StrictFloat, Field(gt=-273.15, le=1000.0)]


class LimitModel(_In):
    """A temperature limit; see docs/alarm-rules.md. It needs a delay, a budget, or both; a
    budget group needs a budget."""

    id: LimitId
    side: Literal["high", "low"]
    threshold_c: Celsius
    inclusive: StrictBool = False
    tier: Severity = Severity.ALARM
    single_event_delay_s: Seconds | None = None
    cumulative_budget_s: PositiveCount | None = None
    budget_group: LimitId | None = Field(default=None, description="needs cumulative_budget_s")

    @model_validator(mode="after")
    def _rule(self) -> Self:
        if self.single_event_delay_s is None and self.cumulative_budget_s is None:
            raise ValueError("a limit needs a single_event_delay_s, a cumulative_budget_s, or both")
        if self.budget_group is not None and self.cumulative_budget_s is None:
            raise ValueError("a budget group needs cumulative_budget_s")
        return self


class HumidityLimitModel(_In):
    id: LimitId
    side: Literal["high", "low"]
    threshold_pct: StrictFloat = Field(ge=0, le=100)
    inclusive: StrictBool = False
    tier: Severity = Severity.WARNING
    delay_s: Seconds = 0


class MktLimitModel(_In):
    """An MKT ceiling; `min_coverage_s` is for trip windows (rolling ones are judged when full)."""

    id: LimitId
    window: Literal["24h", "30d", "trip"]
    max_c: Celsius
    delta_h_over_r_k: StrictFloat = Field(default=10_000.0, ge=1_000.0, le=100_000.0)
    tier: Severity = Severity.ALARM
    min_coverage_s: Seconds | None = Field(default=None, description="trip windows only")

    @model_validator(mode="after")
    def _rule(self) -> Self:
        if self.window != "trip" and self.min_coverage_s is not None:
            raise ValueError("min_coverage_s is for trip windows only")
        return self


class FreezeThawModel(_In):
    """How freeze-thaw cycles are counted (figures only, never an alarm); `thaw_above_c` may not
    be below `freeze_below_c`."""

    freeze_below_c: Celsius = 0.0
    thaw_above_c: Celsius = 2.0
    min_frozen_s: Seconds = 3600
    min_thawed_s: Seconds = 3600


class LightWindowModel(_In):
    """A daily UTC window in which light in the box is allowed; an end before the start runs past
    midnight, and start and end may not be equal."""

    start_utc: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["06:00"])
    end_utc: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["18:00"])


class AlarmProfileBody(_In):
    """A custom alarm profile; the server assigns the version (a POST makes the next one)."""

    id: ProfileId
    version: PositiveCount | None = Field(default=None, description="ignored: assigned by the server")
    name: Line
    description: Comment = ""
    limits: list[LimitModel] = Field(max_length=50)
    start_delay_s: Seconds = 0
    door_open_tolerance_s: Seconds = 0
    rate_of_change_c_per_min: StrictFloat | None = Field(default=None, gt=0, le=1000)
    rate_of_change_tier: Severity = Severity.WARNING
    humidity_limits: list[HumidityLimitModel] = Field(default=[], max_length=50)
    humidity_hysteresis_pct: StrictFloat = Field(default=0.0, ge=0, le=100)
    mkt_limits: list[MktLimitModel] = Field(default=[], max_length=10)
    no_data_intervals: Intervals | None = None
    seq_gap_alarm: StrictBool = True
    low_battery_pct: StrictFloat | None = Field(default=None, ge=0, le=100)
    hysteresis_c: StrictFloat = Field(default=0.0, ge=0, le=100)
    resolve_hold_s: Seconds = 0
    freeze_thaw: FreezeThawModel | None = Field(default=None, description="counted in the lot figures")
    door_open_max_min: Annotated[int, Interval(ge=1, le=10_080), BeforeValidator(whole_number)] | None = (
        Field(default=None, description="alert when the door stays open longer (minutes)")
    )
    light_windows: list[LightWindowModel] | None = Field(
        default=None, max_length=24,
        description="daily UTC windows in which light (the box opened) is allowed;"
        " [] = never; null = not judged",
    )
    shock_max_g: StrictFloat | None = Field(
        default=None, gt=0, le=1000, description="alert on a shock above (g)"
    )
    handling_tier: Severity = Field(
        default=Severity.ALARM, description="severity of door, light and shock alerts"
    )

    def to_domain(self) -> AlarmProfile:
        """The domain profile; its own checks (unique ids, budget groups, ...) still apply."""
        doc = self.model_dump(exclude={"version"})
        if doc["freeze_thaw"] is None:
            del doc["freeze_thaw"]
        return AlarmProfile.from_dict({**doc, "version": self.version or 1})


class LimitOut(_Out):
    id: str
    side: str
    threshold_c: float
    inclusive: bool
    tier: Severity
    single_event_delay_s: int | None
    cumulative_budget_s: int | None
    budget_group: str | None


class HumidityLimitOut(_Out):
    id: str
    side: str
    threshold_pct: float
    inclusive: bool
    tier: Severity
    delay_s: int


class MktLimitOut(_Out):
    id: str
    window: str
    max_c: float
    delta_h_over_r_k: float
    tier: Severity
    min_coverage_s: int | None


class FreezeThawOut(_Out):
    freeze_below_c: float
    thaw_above_c: float
    min_frozen_s: int
    min_thawed_s: int


class LightWindowOut(_Out):
    start_utc: str
    end_utc: str


class AlarmProfileOut(_Out):
    id: str
    version: int
    name: str
    description: str
    limits: list[LimitOut]
    start_delay_s: int
    door_open_tolerance_s: int
    rate_of_change_c_per_min: float | None
    rate_of_change_tier: Severity
    humidity_limits: list[HumidityLimitOut]
    humidity_hysteresis_pct: float
    mkt_limits: list[MktLimitOut]
    no_data_intervals: int | None
    seq_gap_alarm: bool
    low_battery_pct: float | None
    hysteresis_c: float
    resolve_hold_s: int
    freeze_thaw: FreezeThawOut | None = None
    door_open_max_min: int | None = None
    light_windows: list[LightWindowOut] | None = None
    shock_max_g: float | None = None
    handling_tier: Severity = Severity.ALARM


ProfileState = Literal["draft", "approved", "rejected"]


class ProfileDraftOut(AlarmProfileOut):
    """A new profile version: a draft until another QA person approves it."""

    state: ProfileState
    created_by: str


def _limit_out(x: Limit) -> LimitOut:
    return LimitOut.model_validate(x.to_dict())


def _humidity_out(x: HumidityLimit) -> HumidityLimitOut:
    return HumidityLimitOut.model_validate(x.to_dict())


def _mkt_out(x: MktLimit) -> MktLimitOut:
    return MktLimitOut.model_validate(x.to_dict())


def profile_out(p: AlarmProfile) -> AlarmProfileOut:
    return AlarmProfileOut(
        id=p.id,
        version=p.version,
        name=p.name,
        description=p.description,
        limits=[_limit_out(x) for x in p.limits],
        start_delay_s=p.start_delay_s,
        door_open_tolerance_s=p.door_open_tolerance_s,
        rate_of_change_c_per_min=p.rate_of_change_c_per_min,
        rate_of_change_tier=p.rate_of_change_tier,
        humidity_limits=[_humidity_out(x) for x in p.humidity_limits],
        humidity_hysteresis_pct=p.humidity_hysteresis_pct,
        mkt_limits=[_mkt_out(x) for x in p.mkt_limits],
        no_data_intervals=p.no_data_intervals,
        seq_gap_alarm=p.seq_gap_alarm,
        low_battery_pct=p.low_battery_pct,
        hysteresis_c=p.hysteresis_c,
        resolve_hold_s=p.resolve_hold_s,
        freeze_thaw=None if p.freeze_thaw is None else FreezeThawOut.model_validate(p.freeze_thaw.to_dict()),
        door_open_max_min=p.door_open_max_min,
        light_windows=None
        if p.light_windows is None
        else [LightWindowOut.model_validate(x.to_dict()) for x in p.light_windows],
        shock_max_g=p.shock_max_g,
        handling_tier=p.handling_tier,
    )


# -- e-signatures (21 CFR Part 11) -------------------------------------------------------------


class SignatureIn(_In):
    """The signer's password, entered again for this signature, and what the signature means."""

    password: Annotated[str, Field(min_length=1, max_length=256)]
    meaning: Meaning


class SignatureOut(_Out):
    """A signature as every view of the signed record shows it (§11.50): who, when, what it means.
    `status` is given where the record was checked against what was signed."""

    id: int
    signer: str = Field(description="the signer's printed name")
    user: str = Field(description="the signer's e-mail")
    meaning: Meaning
    signed_at: datetime
    record_hash: str = Field(description="SHA-256 of the signed record's canonical content")
    action: str
    status: Literal["valid", "broken"] | None = None
    reason: str | None = Field(default=None, description="why a signature shows broken")


def signature_out(sig: Signature) -> SignatureOut:
    status: Literal["valid", "broken"] | None = None
    if sig.intact is not None:
        status = "valid" if sig.intact else "broken"
    return SignatureOut(
        id=sig.id,
        signer=sig.signer,
        user=sig.user,
        meaning=sig.meaning,
        signed_at=sig.signed_at.astimezone(UTC),
        record_hash=sig.record_hash,
        action=sig.action,
        status=status,
        reason="the record changed after it was signed" if sig.intact is False else None,
    )


# -- alerts -----------------------------------------------------------------------------------


class AckBody(_In):
    comment: Annotated[str, Field(max_length=2000, pattern=TEXT_PATTERN)] | None = None


class CloseBody(_In):
    disposition: Disposition
    comment: Annotated[str, Field(min_length=1, max_length=4000, pattern=TEXT_PATTERN)]
    signature: SignatureIn | None = Field(
        default=None, description="required: QA's e-signature (21 CFR Part 11); 422 without it"
    )


class AssignBody(_In):
    assignee: Line | None = None


class LotRef(_Out):
    gtin: str
    lot: str


class AlertOut(_Out):
    id: int
    kind: str
    severity: Severity
    state: AlertState
    device: str | None
    shipment: str | None
    limit: str | None
    profile: str | None
    profile_version: int | None
    message: str
    opened_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    peak_c: float | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    closed_at: datetime | None
    disposition: Disposition | None
    assignee: str | None
    lots: list[LotRef]
    signatures: list[SignatureOut] = Field(default=[], description="the disposition's e-signatures")


class AlertEvent(_Out):
    at: datetime
    actor: str
    action: str
    from_: AlertState | None = Field(alias="from", serialization_alias="from")
    to: AlertState | None
    comment: str | None


class AlertDetail(AlertOut):
    history: list[AlertEvent]
    profile_body: dict[str, Any] | None = Field(
        default=None, description="the alarm profile the excursion was judged under, as it stood then"
    )


def _alert_fields(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "state": alert.state,
        "device": alert.device_id,
        "shipment": alert.shipment_id,
        "limit": alert.limit_id,
        "profile": alert.profile_id,
        "profile_version": alert.profile_version,
        "message": alert.message,
        "opened_at": alert.opened_at,
        "started_at": alert.started_at,
        "ended_at": alert.ended_at,
        "peak_c": alert.peak_c,
        "acknowledged_at": alert.acknowledged_at,
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": alert.resolved_at,
        "closed_at": alert.closed_at,
        "disposition": alert.disposition,
        "assignee": alert.assignee,
        "lots": [LotRef(gtin=g, lot=lot) for g, lot in alert.lots],
    }


def alert_out(alert: Alert, signatures: list[Signature] | None = None) -> AlertOut:
    return AlertOut(**_alert_fields(alert), signatures=[signature_out(s) for s in signatures or []])


def alert_detail(
    alert: Alert,
    history: list[dict[str, Any]],
    *,
    signatures: list[Signature] | None = None,
    profile_body: dict[str, Any] | None = None,
) -> AlertDetail:
    return AlertDetail(
        **_alert_fields(alert),
        history=[AlertEvent.model_validate(e) for e in history],
        signatures=[signature_out(s) for s in signatures or []],
        profile_body=profile_body,
    )


# -- lots -------------------------------------------------------------------------------------


class CreditBody(_In):
    """QA gives time back to a lot's stability budget, e.g. when a stability study covers an excursion."""

    seconds: StrictFloat = Field(gt=0, le=10 * 365 * 86400)
    reason: Annotated[str, Field(min_length=1, max_length=4000, pattern=REASON_PATTERN)]
    alert_id: RowId | None = None
    signature: SignatureIn | None = Field(
        default=None, description="required: QA's e-signature (21 CFR Part 11); 422 without it"
    )


class CreditOut(_Out):
    id: int
    seconds: float
    reason: str
    alert_id: int | None
    credited_by: str
    credited_at: datetime
    signatures: list[SignatureOut] = Field(default=[], description="the credit's e-signatures")


class CreditResult(CreditOut):
    stability_budget_remaining_s: float
    resolved_alerts: list[int]


class DispositionBody(_In):
    """QA's decision on a lot, with why, under the signer's e-signature."""

    disposition: Disposition
    comment: Annotated[str, Field(min_length=1, max_length=4000, pattern=REASON_PATTERN)]
    signature: SignatureIn | None = Field(
        default=None,
        description="required: QA's e-signature (21 CFR Part 11), meaning `release` for a release,"
        " `rejection` for a rejection, `responsibility` for a quarantine; 422 without it",
    )


class DispositionOut(_Out):
    id: int
    state: Disposition = Field(description="the decision")
    previous: Disposition | None = Field(description="the state before it (null: pending)")
    comment: str
    decided_by: str
    decided_at: datetime
    signatures: list[SignatureOut] = Field(default=[], description="the decision's e-signatures")


class LotDispositionOut(_Out):
    state: Literal["pending", "quarantine", "release", "reject"] = Field(
        description="the latest decision; `pending` before QA's first"
    )
    history: list[DispositionOut] = Field(description="every decision, oldest first")


class LotOut(_Out):
    gtin: str
    lot: str
    expiry: date | None
    digital_link: str
    shipments: list[str]
    devices: list[str]
    excursions: list[AlertOut]
    mkt_c: float | None
    time_out_of_range_s: dict[str, float] = Field(description="seconds beyond each limit, by limit id")
    outside_labelled_range_s: float
    stability_budget_s: float | None
    stability_budget_credited_s: float
    stability_budget_remaining_s: float | None
    stability_budget_credits: list[CreditOut]
    worst_logger_per_shipment: dict[str, str] = Field(description="device id by shipment id")
    freeze_thaw_cycles: int | None = Field(
        description="freeze-thaw cycles over the lot's legs (per leg, the most any one logger "
        "counted); null when no leg's profile counts them (its `freeze_thaw` is unset)"
    )
    disposition: LotDispositionOut | None = Field(
        default=None, description="QA's disposition: state and signed history (null in a partner's view)"
    )


class RawReading(_Out):
    t: datetime
    device: str
    shipment: str
    c: float
    rh: float | None
    late: bool
    door: bool = Field(default=False, description="the door was open")
    light: bool = Field(default=False, description="light inside the box: it was open")
    lat: float | None = Field(default=None, description="WGS 84 latitude, degrees (a gateway with GPS)")
    lon: float | None = Field(default=None, description="WGS 84 longitude, degrees")
    shock_g: float | None = Field(default=None, description="peak shock since the reading before, g")


class BucketReading(_Out):
    t: datetime = Field(description="start of the bucket")
    device: str
    c: float = Field(description="mean")
    min_c: float
    max_c: float
    n: int


class LotReadings(_Out):
    gtin: str
    lot: str
    bucket: str
    readings: list[RawReading] | list[BucketReading]


def check_gtin(value: str) -> str:
    """A path GTIN with the check digit verified (the pattern is checked by the route)."""
    try:
        return _check_gtin(value)
    except ValueError as exc:
        raise ValidationError(str(exc), field="gtin") from None


# -- evidence ---------------------------------------------------------------------------------
# The evidence record (`?format=json`) is written by `evidence.tabular` as a stream, byte for byte
# the document whose SHA-256 the PDF and the bundle's manifest name; these models describe it.
# Objects the platform stores as frozen JSON (alarm profile bodies, lifecycle events, messages
# sent, signatures) are described as objects: their keys are documented in docs/evidence.md.


class EvidenceWindow(_Out):
    from_: datetime = Field(alias="from")
    to: datetime | None


class EvidenceLot(_Out):
    gtin: str
    lot: str
    quantity: int | None = None
    expiry: date | None = None
    digital_link: str | None = None
    stability_budget_s: float | None = None
    stability_budget_spent_s: float | None = None
    stability_budget_credited_s: float | None = None
    stability_budget_remaining_s: float | None = None
    disposition: Literal["pending", "quarantine", "release", "reject"] | None = Field(
        default=None, description="QA's disposition of the lot"
    )


class EvidenceSubject(_Out):
    """What the record covers; which fields are present depends on `kind`."""

    kind: Literal["lot", "shipment", "excursion"]
    gtin: str | None = Field(default=None, description="lot")
    lot: str | None = Field(default=None, description="lot")
    expiry: date | None = Field(default=None, description="lot")
    digital_link: str | None = Field(default=None, description="lot")
    shipments: list[str] | None = Field(default=None, description="lot: every leg's shipment")
    shipment: str | None = Field(default=None, description="shipment, excursion")
    alert: int | None = Field(default=None, description="excursion")
    device: str | None = Field(default=None, description="excursion")
    state: str | None = Field(default=None, description="excursion")
    window: EvidenceWindow | None = Field(default=None, description="excursion: the readings listed")
    lots: list[EvidenceLot] | None = Field(default=None, description="shipment, excursion: lots carried")


class EvidenceCredit(_Out):
    id: int
    seconds: float
    reason: str
    alert_id: int | None
    credited_by: str
    credited_at: datetime


class EvidenceFigures(_Out):
    mkt_c: float | None
    time_out_of_range_s: dict[str, float]
    outside_labelled_range_s: float
    stability_budget_s: float | None
    stability_budget_credited_s: float
    stability_budget_remaining_s: float | None
    stability_budget_credits: list[EvidenceCredit]
    worst_logger_per_shipment: dict[str, str]
    freeze_thaw_cycles: int | None
    readings: int


class EvidenceMktWindow(_Out):
    window_s: int
    max_c: float
    ending_at: datetime
    covered: bool


class EvidenceEngineExcursion(_Out):
    kind: str
    limit: str
    tier: str
    start: datetime
    raised: datetime
    end: datetime | None
    resolved: datetime | None
    peak: float
    duration_s: float


class EvidenceLoggerStats(_Out):
    readings: int
    first: datetime
    last: datetime
    min_c: float
    max_c: float
    mean_c: float
    mkt_c: float | None
    delta_h_over_r_k: float
    time_beyond_s: dict[str, float]
    outside_labelled_range_s: float
    freeze_thaw_cycles: int | None
    mkt_windows: dict[str, EvidenceMktWindow]
    engine_excursions: list[EvidenceEngineExcursion]


class EvidenceLegStats(_Out):
    loggers: int
    readings: int
    min_c: float
    max_c: float
    mean_c: float
    worst_logger: str
    mkt_c: float | None
    time_beyond_s: dict[str, float]
    outside_labelled_range_s: float
    mkt_windows: dict[str, EvidenceMktWindow]


class EvidenceReading(_Out):
    t: datetime = Field(description="the platform's time (clock corrections applied)")
    device_t: datetime = Field(description="the logger's own clock")
    c: float
    rh: float | None = None
    door: bool | None = Field(default=None, description="present (true) only when the door was open")
    late: bool | None = Field(default=None, description="present (true) only for late data")
    clock_corrected: bool | None = Field(default=None, description="present (true) only when corrected")


class EvidenceDevice(_Out):
    id: str
    kind: str | None
    name: str | None
    interval_s: int | None
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    calibration: dict[str, Any] | None = Field(description="what the logger last reported of its calibration")
    calibration_in_force: dict[str, Any] | None = Field(
        default=None,
        description="the certificates in force over the listed readings' days: `status` (the worst),"
        " `readings_out_of_calibration`, `periods` (`from`, `to`, `readings`, `status`, `certificate`)"
        " and QA's signed `override` of the assignment, if any",
    )
    stats: EvidenceLoggerStats | None
    readings_listed: int
    readings: list[EvidenceReading]


class EvidenceLotCarried(_Out):
    gtin: str
    lot: str
    quantity: int | None


class EvidenceShipment(_Out):
    id: str
    origin: str | None
    destination: str | None
    created_at: datetime | None
    profile: str = Field(description="the profile in force: `id vN`")
    lots: list[EvidenceLotCarried]


class EvidenceExcursion(_Out):
    id: int
    kind: str
    severity: str
    state: str
    device: str | None
    shipment: str | None
    limit: str | None
    profile: str | None
    message: str
    started_at: datetime | None
    ended_at: datetime | None
    peak_c: float | None
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    closed_at: datetime | None
    disposition: str | None
    lifecycle: list[dict[str, Any]] = Field(description="who, when, what, why")
    notifications: list[dict[str, Any]] = Field(description="who was told, by which channel, and the outcome")
    signatures: list[dict[str, Any]]


class EvidenceLeg(_Out):
    shipment: EvidenceShipment
    stats: EvidenceLegStats | None
    devices: list[EvidenceDevice]
    excursions: list[EvidenceExcursion]


class EvidenceRecord(_Out):
    """The evidence record (`format` `coldchain-evidence/1`); its SHA-256 is the record hash."""

    format: Literal["coldchain-evidence/1"]
    kind: Literal["lot", "shipment", "excursion"]
    title: str
    subject: EvidenceSubject
    generated_at: datetime
    platform_version: str
    profile: dict[str, Any] | None = Field(description="the first leg's alarm profile, as frozen")
    profiles: dict[str, dict[str, Any]] = Field(description="every profile in force, by `id vN`")
    figures: EvidenceFigures
    legs: list[EvidenceLeg]
    signatures: list[dict[str, Any]]
    disposition: dict[str, Any] | None = Field(
        description="a lot's: `state` (`pending`, `quarantine`, `release`, `reject`), `cbv_disposition`"
        " and `history` (each decision with its comment and checked signatures); null for others"
    )


class PublicKeyOut(_Out):
    algorithm: Literal["Ed25519"]
    key_id: str
    public_key_pem: str


class VerifyResult(_Out):
    authentic: bool
    reason: str
    file: str | None = Field(description="what was checked: `bundle` or `pdf`")
    subject: dict[str, Any] | None = Field(description="the record's subject, when it could be read")
    record_sha256: str | None
    key_id: str | None


# -- master data: products, sites, lots, shipment edits, assignments ---------------------------
# The rules are coldchain.master_data's, the same the bulk import applies (docs/imports.md).


def _kernel(check: Any, *args: Any) -> Any:
    """A master-data rule of the kernel as a pydantic check (a ValueError names the field)."""
    try:
        return check(*args)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


Gln = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{13}$",
        examples=["9520123456788"],
        description="a GS1 GLN: 13 digits with a valid mod-10 check digit (format `gln`)",
        json_schema_extra={"format": "gln"},
    ),
    AfterValidator(lambda v: _kernel(master_data.check_gln, v)),
]
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"  # a line, not blank
Name = Annotated[str, Field(min_length=1, max_length=master_data.NAME_MAX, pattern=NAME_PATTERN)]
Address = Annotated[str, Field(max_length=master_data.ADDRESS_MAX, pattern=TEXT_PATTERN)]
Mode = Literal["road", "air", "sea", "rail", "courier", "multimodal"]
ShipmentState = Literal["planned", "in_transit", "delivered", "cancelled"]
ActivationEnergy = Annotated[float, Field(gt=0, lt=master_data.ACTIVATION_ENERGY_MAX)]
Serial = Annotated[
    str,
    Field(pattern=master_data.SERIAL_ITEM_PATTERN, description="a serial (AI (21)) or a range `A..B`"),
    AfterValidator(lambda v: _kernel(master_data.check_serial, v)),
]


class ProductCreate(_In):
    """A product. Its labelled range, default profile, stability budget and activation energy
    decide alarms and budgets: set here when it is registered, changed afterwards by QA only."""

    gtin: Gtin
    name: Name
    range_min_c: Celsius | None = None
    range_max_c: Celsius | None = Field(default=None, description="above `range_min_c`")
    stability_budget_s: BigCount | None = None
    activation_energy_kj_mol: ActivationEnergy | None = None
    default_profile: ProfileId | None = None

    @model_validator(mode="after")
    def _range(self) -> Self:
        _kernel(master_data.check_labelled_range, self.range_min_c, self.range_max_c)
        return self


class ProductUpdate(_In):
    """The fields to change (absent: unchanged; null: cleared). Changing the labelled range,
    default profile, stability budget or activation energy is QA's (change_profile)."""

    name: Name | None = None
    range_min_c: Celsius | None = None
    range_max_c: Celsius | None = None
    stability_budget_s: BigCount | None = None
    activation_energy_kj_mol: ActivationEnergy | None = None
    default_profile: ProfileId | None = None

    @model_validator(mode="after")
    def _name(self) -> Self:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be cleared")
        return self


class ProductOut(_Out):
    gtin: str
    name: str
    range_min_c: float | None
    range_max_c: float | None
    stability_budget_s: int | None
    activation_energy_kj_mol: float | None
    default_profile: str | None
    version: int = Field(description="the row version; the ETag is `\"v<version>\"`")
    created_at: datetime
    updated_at: datetime


class SiteCreate(_In):
    gln: Gln
    name: Name
    address: Address | None = None


class SiteUpdate(_In):
    name: Name | None = None
    address: Address | None = None

    @model_validator(mode="after")
    def _name(self) -> Self:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be cleared")
        return self


class SiteOut(_Out):
    gln: str
    name: str
    address: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class LotCreate(_In):
    lot: LotCode
    expiry: Day | None = None
    quantity: Count | None = None
    serials: list[Serial] | None = Field(default=None, max_length=1000)
    stability_budget_s: BigCount | None = Field(default=None, description="default: the product's")


class LotUpdate(_In):
    """The fields to change (absent: unchanged; null: cleared); the stability budget is QA's."""

    expiry: Day | None = None
    quantity: Count | None = None
    serials: list[Serial] | None = Field(default=None, max_length=1000)
    stability_budget_s: BigCount | None = None


class LotRecordOut(_Out):
    gtin: str
    lot: str
    expiry: date | None
    quantity: int | None
    serials: list[str] | None
    stability_budget_s: int | None
    version: int
    created_at: datetime
    updated_at: datetime


class LegIn(_In):
    seq: Annotated[int, Interval(ge=1, le=100), BeforeValidator(whole_number)]
    origin_gln: Gln | None = None
    destination_gln: Gln | None = None
    carrier: Line | None = None
    mode: Mode | None = None
    planned_departure: Moment | None = None
    planned_arrival: Moment | None = Field(default=None, description="not before `planned_departure`")
    actual_departure: Moment | None = None
    actual_arrival: Moment | None = Field(default=None, description="not before `actual_departure`")
    state: ShipmentState = "planned"

    @model_validator(mode="after")
    def _times(self) -> Self:
        _kernel(master_data.check_times, self.planned_departure, self.planned_arrival)
        _kernel(master_data.check_times, self.actual_departure, self.actual_arrival)
        return self


class ShipmentUpdate(_In):
    """The header fields to change (absent: unchanged; null: cleared) and, when given, the whole
    list of legs (replacing the stored one). The profile is not changed here (a new shipment is).
    A state moves forward only: planned, in_transit, delivered; or cancelled before delivery."""

    origin: Line | None = None
    destination: Line | None = None
    origin_gln: Gln | None = None
    destination_gln: Gln | None = None
    carrier: Line | None = None
    mode: Mode | None = None
    planned_departure: Moment | None = None
    planned_arrival: Moment | None = None
    actual_departure: Moment | None = None
    actual_arrival: Moment | None = None
    state: ShipmentState | None = None
    legs: list[LegIn] | None = Field(
        default=None, max_length=100, description="legs in order, `seq` 1, 2, ..."
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if "state" in self.model_fields_set and self.state is None:
            raise ValueError("state cannot be cleared")
        if "legs" in self.model_fields_set and self.legs is None:
            raise ValueError("legs cannot be null; send [] for none")
        if self.legs is not None and [x.seq for x in self.legs] != list(range(1, len(self.legs) + 1)):
            raise ValueError("legs are numbered 1, 2, ... in order")
        return self


class AssignmentCreate(_In):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    device: DeviceId
    from_: Moment = Field(alias="from", description="RFC 3339 with an offset")
    to: Moment | None = Field(default=None, description="open-ended when null; after `from`")
    calibration_override: CalibrationOverrideIn | None = Field(
        default=None,
        description="QA's signed override, only for a logger out of calibration on `from` (409 without"
        " it, 422 with it for a logger that is not); as in POST /shipments/{id}/devices",
    )


class AssignmentUpdate(_In):
    """A correction: a new start, a new end (`to`: ending the ride; null: open-ended again) or
    another shipment; readings in the old and new window follow, and the rules judge again."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    from_: Moment | None = Field(default=None, alias="from")
    to: Moment | None = None
    shipment: ShipmentId | None = None
    reason: Annotated[str, Field(max_length=2000, pattern=REASON_PATTERN)] | None = Field(
        default=None, description="why, for the audit trail"
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if "from_" in self.model_fields_set and self.from_ is None:
            raise ValueError("from cannot be cleared")
        if "shipment" in self.model_fields_set and self.shipment is None:
            raise ValueError("shipment cannot be cleared")
        return self


class AssignmentRecordOut(_Out):
    id: int
    device: str
    shipment: str
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    readings_relinked: int | None = Field(
        default=None, description="on an add or a correction: readings linked anew to a shipment or to none"
    )
