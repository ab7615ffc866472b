"""Logger export files as the domain sees them: the readings a file carries and the results the
device itself printed (its alarms, daily records, MKT), kept apart from anything we compute."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from coldchain.errors import ValidationError

__all__ = [
    "DeviceAlarm",
    "DeviceAlarmEvent",
    "DeviceDay",
    "DeviceResults",
    "LoggerFile",
    "LoggerFileError",
]

AlarmSide = Literal["high", "low"]
AlarmMode = Literal["single", "cumulative"]


class LoggerFileError(ValidationError):
    """A logger file that cannot be read; `line` is the 1-based line at fault (None: the whole file)."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}", field="file")
        self.line = line


@dataclass(frozen=True, slots=True)
class DeviceAlarm:
    """One alarm the device was configured with: beyond `threshold_c` for `delay_s`.

    `mode` single: consecutive time beyond; cumulative: total time beyond over the run.
    `number` is the device's own numbering of the alarm (as printed in its report).
    """

    number: int
    side: AlarmSide
    threshold_c: float
    delay_s: int
    mode: AlarmMode = "single"

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "side": self.side, "threshold_c": self.threshold_c,
            "delay_s": self.delay_s, "mode": self.mode,
        }


@dataclass(frozen=True, slots=True)
class DeviceAlarmEvent:
    """An alarm as the device reported it. Times are epoch ms (UTC); None where not printed."""

    alarm: int
    side: AlarmSide
    mode: AlarmMode
    triggered_ms: int | None
    start_ms: int | None = None
    end_ms: int | None = None
    duration_s: int | None = None  # the device's time beyond (accumulated or of the event)
    extreme_c: float | None = None
    day: date | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alarm": self.alarm, "side": self.side, "mode": self.mode,
            "triggered_ms": self.triggered_ms, "start_ms": self.start_ms, "end_ms": self.end_ms,
            "duration_s": self.duration_s, "extreme_c": self.extreme_c,
            "day": self.day.isoformat() if self.day else None,
        }


@dataclass(frozen=True, slots=True)
class DeviceDay:
    """One daily record of a summary-keeping device (Fridge-tag): the day as the device saw it."""

    day: date
    min_c: float | None
    min_ms: int | None
    max_c: float | None
    max_ms: int | None
    mean_c: float | None
    alarms: tuple[dict[str, Any], ...] = ()  # per alarm: accumulated minutes, trigger time
    sensor_timeout_min: int | None = None
    events: int | None = None
    checked: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(), "min_c": self.min_c, "min_ms": self.min_ms,
            "max_c": self.max_c, "max_ms": self.max_ms, "mean_c": self.mean_c,
            "alarms": list(self.alarms), "sensor_timeout_min": self.sensor_timeout_min,
            "events": self.events, "checked": self.checked,
        }


@dataclass(frozen=True, slots=True)
class DeviceResults:
    """What the device printed about the whole run (None where it printed nothing)."""

    mkt_c: float | None = None
    mkt_delta_h_kj_mol: float | None = None
    min_c: float | None = None
    min_ms: int | None = None
    max_c: float | None = None
    max_ms: int | None = None
    mean_c: float | None = None
    start_ms: int | None = None
    stop_ms: int | None = None
    measurements: int | None = None
    derived_from_days: bool = False  # min/max/mean taken from the daily records, not printed whole

    def to_dict(self) -> dict[str, Any]:
        return {
            "mkt_c": self.mkt_c, "mkt_delta_h_kj_mol": self.mkt_delta_h_kj_mol,
            "min_c": self.min_c, "min_ms": self.min_ms, "max_c": self.max_c,
            "max_ms": self.max_ms, "mean_c": self.mean_c, "start_ms": self.start_ms,
            "stop_ms": self.stop_ms, "measurements": self.measurements,
            "derived_from_days": self.derived_from_days,
        }


@dataclass(frozen=True, slots=True, eq=False)
class LoggerFile:
    """A parsed export: readings (UTC epoch ms, °C, strictly increasing) and the device's results.

    `missing` counts readings the file marks as not measured (`--.-`): skipped, never stored.
    `interval_s` is the logging interval (None when the file has no series). `signature` keeps the
    file's own certificate and signature fields as printed.
    """

    format: str
    model: str
    serial: str | None
    times_ms: npt.NDArray[np.int64]
    celsius: npt.NDArray[np.float64]
    missing: int = 0
    interval_s: int | None = None
    internal_sample_s: int = 60
    start_delay_s: int = 0
    zone_offset_s: int = 0  # the device clock's offset from UTC (its daily records are local days)
    alarms: tuple[DeviceAlarm, ...] = ()
    results: DeviceResults = field(default_factory=DeviceResults)
    days: tuple[DeviceDay, ...] = ()
    events: tuple[DeviceAlarmEvent, ...] = ()
    signature: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = np.asarray(self.times_ms, dtype=np.int64)
        v = np.asarray(self.celsius, dtype=np.float64)
        if t.shape != v.shape or t.ndim != 1:
            raise ValidationError("logger file columns differ in length")
        object.__setattr__(self, "times_ms", t)
        object.__setattr__(self, "celsius", v)

    @property
    def summary_only(self) -> bool:
        """True when the file keeps daily summaries but no series (Fridge-tag 2)."""
        return len(self.times_ms) == 0 and bool(self.days)

    def __len__(self) -> int:
        return len(self.times_ms)
