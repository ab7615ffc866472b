"""Domain types shared by every package: devices, shipments, lots, reading batches, alerts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from coldchain.errors import ValidationError
from coldchain.gs1 import normalize_gtin, validate_lot

if TYPE_CHECKING:
    # numpy is imported lazily: the edge agent uses this module but must not pay ~15 MB for numpy.
    import numpy as np
    import numpy.typing as npt

    TimeArray = npt.NDArray[np.int64]
    FloatArray = npt.NDArray[np.float64]
else:

    def __getattr__(name: str) -> Any:
        """TimeArray and FloatArray, built on first use so that importing this module does not
        import numpy."""
        if name in ("TimeArray", "FloatArray"):
            import numpy as np
            import numpy.typing as npt

            alias = npt.NDArray[np.int64] if name == "TimeArray" else npt.NDArray[np.float64]
            globals()[name] = alias
            return alias
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A device's name on the broker (MQTT username, topic level, the batch's `device`): its id in the
# default organization, `{organization slug}~{id}` in another (ids are unique per organization).
DEVICE_NAME_RE = re.compile(r"^(?:[a-z0-9][a-z0-9-]{0,62}~)?[A-Za-z0-9_.-]{1,64}$")
SHIPMENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


def validate_device_id(device_id: str) -> str:
    """Device ids appear in MQTT topics, so they are restricted to a topic-safe alphabet."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise ValidationError(f"device id {device_id!r} must match [A-Za-z0-9_.-]{{1,64}}", field="device")
    return device_id


def validate_device_name(name: str) -> str:
    """A device's MQTT name: `{id}`, or `{organization}~{id}` for a device of another organization
    than the default one."""
    if not isinstance(name, str) or not DEVICE_NAME_RE.match(name):
        raise ValidationError(
            f"device {name!r} must be a device id ([A-Za-z0-9_.-]{{1,64}}) or organization~id",
            field="device",
        )
    return name


@dataclass(frozen=True, slots=True)
class Device:
    """A logger registered to an organization; `interval_s` is its expected sampling interval."""

    id: str
    kind: str = "logger"
    interval_s: int = 60
    organization: str = "default"
    name: str | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.id)
        if not 1 <= self.interval_s <= 86_400:
            raise ValidationError("interval_s must be between 1 and 86400", field="interval_s")


@dataclass(frozen=True, slots=True)
class Lot:
    """A production lot of a trade item: GS1 AI (01) GTIN and AI (10) batch/lot, AI (17) expiry.

    `stability_budget_s` is how long the lot may spend outside its labelled range over its
    whole journey (from the product's stability data), when known.
    """

    gtin: str
    lot: str
    expiry: date | None = None
    stability_budget_s: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gtin", normalize_gtin(self.gtin))
        validate_lot(self.lot)
        if self.stability_budget_s is not None and self.stability_budget_s < 0:
            raise ValidationError("stability_budget_s must not be negative", field="stability_budget_s")


@dataclass(frozen=True, slots=True)
class ShipmentLot:
    """A quantity of one lot travelling in a shipment."""

    lot: Lot
    quantity: int | None = None

    def __post_init__(self) -> None:
        if self.quantity is not None and self.quantity < 0:
            raise ValidationError("quantity must not be negative", field="quantity")


@dataclass(frozen=True, slots=True)
class DeviceAssignment:
    """A logger travelling with a shipment from `start` until `end` (open-ended when None)."""

    device_id: str
    start: datetime
    end: datetime | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValidationError("assignment times need a UTC offset", field="devices")
        if self.end is not None and self.end <= self.start:
            raise ValidationError("assignment ends before it starts", field="devices")


@dataclass(frozen=True, slots=True)
class Shipment:
    """A consignment of lots with the loggers that ride with it and the alarm profile it is under."""

    id: str
    profile: str = "2-8C"
    origin: str | None = None
    destination: str | None = None
    lots: tuple[ShipmentLot, ...] = ()
    devices: tuple[DeviceAssignment, ...] = ()
    organization: str = "default"

    def __post_init__(self) -> None:
        if not SHIPMENT_ID_RE.match(self.id):
            raise ValidationError(f"shipment id {self.id!r} is not valid", field="id")
        keys = [(sl.lot.gtin, sl.lot.lot) for sl in self.lots]
        if len(set(keys)) != len(keys):
            raise ValidationError("a lot is listed twice in the shipment", field="lots")


@dataclass(frozen=True, slots=True, eq=False)
class ReadingBatch:
    """One wire message: a device's numbered batch of readings, held as numpy columns.

    The server side decodes into this type; the edge agent, which never imports numpy, encodes
    plain columns with coldchain.wire's `encode_*_columns` instead.

    Times are epoch milliseconds on the device's clock; `sent_ms` is the device clock at sending,
    which lets ingest estimate clock drift. Missing humidity is NaN. `extras` keeps optional
    per-reading fields (door, light, battery) when any reading had them.
    """

    device: str
    seq: int
    sent_ms: int
    t_ms: TimeArray
    celsius: FloatArray
    rh: FloatArray
    extras: tuple[dict[str, Any] | None, ...] | None = None
    version: int = 1

    def __post_init__(self) -> None:
        n = len(self.t_ms)
        if len(self.celsius) != n or len(self.rh) != n:
            raise ValidationError("reading columns differ in length", field="readings")
        if self.extras is not None and len(self.extras) != n:
            raise ValidationError("extras differ in length from readings", field="readings")

    def __len__(self) -> int:
        return len(self.t_ms)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReadingBatch):
            return NotImplemented
        import numpy as np

        return (
            self.device == other.device
            and self.seq == other.seq
            and self.sent_ms == other.sent_ms
            and self.version == other.version
            and np.array_equal(self.t_ms, other.t_ms)
            and np.array_equal(self.celsius, other.celsius, equal_nan=True)
            and np.array_equal(self.rh, other.rh, equal_nan=True)
            and (self.extras or None) == (other.extras or None)
        )

    __hash__ = None  # type: ignore[assignment]


class AlertState(StrEnum):
    """The alert lifecycle: open -> acknowledged -> resolved -> closed (with a QA disposition).

    `withdrawn`: late data re-evaluated the series and no longer supports the episode; only the
    rules withdraw (and reinstate, should later data support it again).
    """

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"


class Disposition(StrEnum):
    """QA's decision on the product affected by an excursion."""

    RELEASE = "release"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Severity(StrEnum):
    """Alarm tiers, in increasing order of urgency."""

    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alert:
    """An excursion (or a device condition) that people must see, acknowledge and disposition."""

    id: int
    organization: str
    kind: str
    severity: Severity
    state: AlertState
    device_id: str | None
    shipment_id: str | None
    limit_id: str | None
    message: str
    opened_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    peak_c: float | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    disposition: Disposition | None = None
    assignee: str | None = None
    profile_id: str | None = None
    profile_version: int | None = None
    lots: tuple[tuple[str, str], ...] = field(default=())
