"""Calibration certificates of loggers and what they mean on a given day: calibrated, due soon,
overdue, or never calibrated. Pure: the storage and the rules decide from these."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from coldchain.errors import ValidationError

__all__ = [
    "DUE_SOON_DAYS", "CalibrationCertificate", "CalibrationPeriod", "CalibrationStatus", "ReferencePoint",
    "periods_over", "status_on", "worst",
]

DUE_SOON_DAYS = 30


class CalibrationStatus(StrEnum):
    CALIBRATED = "calibrated"
    DUE_SOON = "due_soon"
    OVERDUE = "overdue"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class ReferencePoint:
    """One point of the calibration: the reference temperature, what the logger read, the offset."""

    reference_c: float
    reading_c: float
    offset_c: float

    @classmethod
    def from_dict(cls, raw: object) -> ReferencePoint:
        if not isinstance(raw, dict) or not {"reference_c", "reading_c"} <= set(raw):
            raise ValidationError(
                "a reference point is {reference_c, reading_c[, offset_c]}", field="reference_points"
            )
        try:
            ref, reading = float(raw["reference_c"]), float(raw["reading_c"])
            offset = float(raw.get("offset_c", reading - ref))
        except (TypeError, ValueError):
            raise ValidationError(
                "reference point values must be numbers", field="reference_points"
            ) from None
        if not all(math.isfinite(v) for v in (ref, reading, offset)):
            raise ValidationError("reference point values must be finite", field="reference_points")
        if abs((reading - ref) - offset) > 0.05:
            raise ValidationError(
                f"offset {offset} does not equal reading - reference ({reading - ref:.2f})",
                field="reference_points",
            )
        return cls(ref, reading, offset)

    def to_dict(self) -> dict[str, float]:
        return {"reference_c": self.reference_c, "reading_c": self.reading_c, "offset_c": self.offset_c}


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationCertificate:
    performed_on: date
    due_on: date
    laboratory: str
    certificate_number: str
    reference_points: tuple[ReferencePoint, ...] = ()

    def __post_init__(self) -> None:
        if self.due_on <= self.performed_on:
            raise ValidationError("due_on must be after performed_on", field="due_on")
        if not self.laboratory.strip():
            raise ValidationError("laboratory is required", field="laboratory")
        if not self.certificate_number.strip():
            raise ValidationError("certificate_number is required", field="certificate_number")

    def to_dict(self) -> dict[str, Any]:
        return {
            "performed_on": self.performed_on.isoformat(), "due_on": self.due_on.isoformat(),
            "laboratory": self.laboratory, "certificate_number": self.certificate_number,
            "reference_points": [p.to_dict() for p in self.reference_points],
        }


def status_on(
    certificates: list[CalibrationCertificate], day: date
) -> tuple[CalibrationStatus, CalibrationCertificate | None]:
    """The logger's calibration status on `day`, and the certificate that decides it.

    A certificate holds from the day it was performed up to and including its due day; of those
    holding, the one due last decides. Due soon: within DUE_SOON_DAYS of that due day.
    """
    holding = [c for c in certificates if c.performed_on <= day <= c.due_on]
    if holding:
        best = max(holding, key=lambda c: c.due_on)
        if best.due_on - day <= timedelta(days=DUE_SOON_DAYS):
            return CalibrationStatus.DUE_SOON, best
        return CalibrationStatus.CALIBRATED, best
    before = [c for c in certificates if c.performed_on <= day]
    if before:
        return CalibrationStatus.OVERDUE, max(before, key=lambda c: c.due_on)
    return CalibrationStatus.NEVER, None


_WORST = (CalibrationStatus.OVERDUE, CalibrationStatus.NEVER, CalibrationStatus.DUE_SOON,
          CalibrationStatus.CALIBRATED)


@dataclass(frozen=True, slots=True)
class CalibrationPeriod:
    """Consecutive reading days with one calibration status and one deciding certificate."""

    first_day: date
    last_day: date
    readings: int
    status: CalibrationStatus
    certificate: CalibrationCertificate | None


def periods_over(
    certificates: list[CalibrationCertificate], days: list[tuple[date, int]]
) -> list[CalibrationPeriod]:
    """The status on each reading day (days in order, with their reading counts), run together
    while the status and the deciding certificate stay the same: what evidence shows per logger."""
    out: list[CalibrationPeriod] = []
    for day, n in days:
        status, cert = status_on(certificates, day)
        last = out[-1] if out else None
        if last is not None and last.status is status and last.certificate is cert:
            out[-1] = CalibrationPeriod(last.first_day, day, last.readings + n, status, cert)
        else:
            out.append(CalibrationPeriod(day, day, n, status, cert))
    return out


def worst(statuses: list[CalibrationStatus]) -> CalibrationStatus | None:
    """The status a reviewer must see first: overdue, then never, due soon, calibrated."""
    return next((s for s in _WORST if s in statuses), None)
