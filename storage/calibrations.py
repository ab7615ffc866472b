"""Calibration certificates of loggers: recorded (audited), listed, their PDFs, the status on a
day, the loggers coming due, the refusal to assign an out-of-calibration logger and QA's
signed overrides of it. Every function runs in the caller's transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from coldchain.calibration import (
    CalibrationCertificate,
    CalibrationStatus,
    ReferencePoint,
    status_on,
)
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from storage.audit import record


@dataclass(frozen=True, slots=True)
class CalibrationRecord:
    id: int
    device_id: str
    certificate: CalibrationCertificate
    certificate_sha256: str | None
    recorded_by: str
    recorded_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "device": self.device_id, **self.certificate.to_dict(),
            "certificate_pdf": self.certificate_sha256 is not None,
            "certificate_sha256": self.certificate_sha256, "recorded_by": self.recorded_by,
            "recorded_at": self.recorded_at.isoformat(),
        }


def _device(conn: psycopg.Connection, org: int, device_id: str) -> int:
    row = conn.execute("SELECT key FROM devices WHERE org_id = %s AND id = %s", (org, device_id)).fetchone()
    if row is None:
        raise NotFoundError("device", device_id)
    return int(row[0])


def add_certificate(
    conn: psycopg.Connection, *, org: int, device_id: str, certificate: CalibrationCertificate,
    pdf: bytes | None, actor: str,
) -> CalibrationRecord:
    key = _device(conn, org, device_id)
    sha = hashlib.sha256(pdf).hexdigest() if pdf is not None else None
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO device_calibrations (org_id, device_key, performed_on, due_on, laboratory,"
                " certificate_number, reference_points, certificate_pdf, certificate_sha256, recorded_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    org, key, certificate.performed_on, certificate.due_on, certificate.laboratory,
                    certificate.certificate_number,
                    Jsonb([p.to_dict() for p in certificate.reference_points]), pdf, sha, actor,
                ),
            ).fetchone()
    except pg_errors.UniqueViolation:
        raise ConflictError(
            f"certificate {certificate.certificate_number!r} is already recorded for {device_id!r}"
        ) from None
    assert row is not None
    record(
        conn, org_id=org, actor=actor, action="calibrate", entity="device", key=device_id,
        new={**certificate.to_dict(), "certificate_sha256": sha},
    )
    return next(r for r in list_certificates(conn, org=org, device_id=device_id) if r.id == int(row[0]))


def _certs(conn: psycopg.Connection, device_key: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT c.id, d.id, c.performed_on, c.due_on, c.laboratory, c.certificate_number,"
        " c.reference_points, c.certificate_sha256, c.recorded_by, c.recorded_at"
        " FROM device_calibrations c JOIN devices d ON d.key = c.device_key"
        " WHERE c.device_key = %s ORDER BY c.performed_on, c.id",
        (device_key,),
    ).fetchall()


def _record(r: tuple[Any, ...]) -> CalibrationRecord:
    cert = CalibrationCertificate(
        performed_on=r[2], due_on=r[3], laboratory=r[4], certificate_number=r[5],
        reference_points=tuple(ReferencePoint.from_dict(p) for p in r[6]),
    )
    return CalibrationRecord(int(r[0]), r[1], cert, r[7], r[8], r[9])


def list_certificates(conn: psycopg.Connection, *, org: int, device_id: str) -> list[CalibrationRecord]:
    return [_record(r) for r in _certs(conn, _device(conn, org, device_id))]


def certificate_pdf(conn: psycopg.Connection, *, org: int, device_id: str, calibration_id: int) -> bytes:
    row = conn.execute(
        "SELECT c.certificate_pdf FROM device_calibrations c JOIN devices d ON d.key = c.device_key"
        " WHERE d.org_id = %s AND d.id = %s AND c.id = %s",
        (org, device_id, calibration_id),
    ).fetchone()
    if row is None or row[0] is None:
        raise NotFoundError("calibration certificate", f"{device_id}/{calibration_id}")
    return bytes(row[0])


def status_of(
    conn: psycopg.Connection, device_key: int, day: date
) -> tuple[CalibrationStatus, CalibrationRecord | None]:
    """The logger's calibration status on a day (for assignment checks and evidence)."""
    records = [_record(r) for r in _certs(conn, device_key)]
    status, cert = status_on([r.certificate for r in records], day)
    return status, next((r for r in records if r.certificate is cert), None)


def records_of(conn: psycopg.Connection, device_key: int) -> list[CalibrationRecord]:
    """Every certificate of a logger, oldest first (for evidence)."""
    return [_record(r) for r in _certs(conn, device_key)]


def lapsed_certificate(conn: psycopg.Connection, *, device_key: int, day: date) -> CalibrationRecord | None:
    """The certificate that lapsed when a logger that has calibration records is not calibrated
    on `day`; None when it is calibrated (or has no certificate at all).

    A logger with no certificate recorded at all is not refused: the platform cannot know a
    fleet's calibration before its certificates are entered, and refusing every logger would
    stop every shipment on the day the feature arrives.
    """
    status, rec = status_of(conn, device_key, day)
    return rec if status is CalibrationStatus.OVERDUE else None


def refusal(device_id: str, day: date, rec: CalibrationRecord) -> str:
    return (
        f"device {device_id!r} is out of calibration on {day.isoformat()}: certificate "
        f"{rec.certificate.certificate_number} ({rec.certificate.laboratory}) was due on "
        f"{rec.certificate.due_on.isoformat()}"
    )


def check_assignable(
    conn: psycopg.Connection,
    *,
    device_key: int,
    device_id: str,
    day: date,
    override: str | None,
    field: str = "calibration_override",
) -> CalibrationRecord | None:
    """May this logger start riding on `day`? Out of calibration is refused (409) unless QA's
    `override` reason comes with it, and an override that is not needed is refused (422) so that
    no signed deviation is recorded for nothing. Returns the lapsed certificate an override
    covers (None when none is needed)."""
    lapsed = lapsed_certificate(conn, device_key=device_key, day=day)
    if lapsed is not None and override is None:
        raise ConflictError(
            refusal(device_id, day, lapsed) + " (QA may override with a signed `calibration_override`)"
        )
    if lapsed is None and override is not None:
        raise ValidationError(
            f"device {device_id!r} is not out of calibration on {day.isoformat()}: no override is needed",
            field=field,
        )
    return lapsed


def has_override(conn: psycopg.Connection, *, assignment_id: int) -> bool:
    """Whether QA's signed override covers this assignment (its signature covers the window)."""
    row = conn.execute("SELECT 1 FROM calibration_overrides WHERE assignment_id = %s", (assignment_id,))
    return row.fetchone() is not None


@dataclass(frozen=True, slots=True)
class OverrideRow:
    """QA's signed override of the calibration refusal for one assignment."""

    id: int
    assignment_id: int
    device_key: int
    shipment_key: int
    device_id: str
    shipment_id: str
    rode_from: datetime
    rode_to: datetime | None
    calibration_id: int | None
    certificate_number: str | None
    laboratory: str | None
    due_on: date | None
    status: str
    reason: str
    overridden_by: str
    overridden_at: datetime

    def signed_record(self) -> dict[str, Any]:
        """The override as its signature covers it (rebuilt the same way on every read)."""
        return {
            "entity": "calibration_override",
            "id": self.id,
            "assignment": self.assignment_id,
            "device": self.device_id,
            "shipment": self.shipment_id,
            "from": self.rode_from,
            "to": self.rode_to,
            "calibration": self.calibration_id,
            "certificate_number": self.certificate_number,
            "due_on": self.due_on,
            "status": self.status,
            "reason": self.reason,
            "overridden_by": self.overridden_by,
            "overridden_at": self.overridden_at,
        }

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "certificate_number": self.certificate_number,
            "laboratory": self.laboratory,
            "due_on": None if self.due_on is None else self.due_on.isoformat(),
            "status": self.status,
            "reason": self.reason,
            "overridden_by": self.overridden_by,
            "overridden_at": self.overridden_at,
        }


_OVERRIDE_SELECT = (
    "SELECT o.id, o.assignment_id, o.device_key, o.shipment_key, d.id AS device_id, s.id AS shipment_id,"
    " lower(a.during) AS rode_from, upper(a.during) AS rode_to, o.calibration_id, c.certificate_number,"
    " c.laboratory, c.due_on, o.status, o.reason, o.overridden_by, o.overridden_at"
    " FROM calibration_overrides o JOIN device_assignments a ON a.id = o.assignment_id"
    " JOIN devices d ON d.key = o.device_key JOIN shipments s ON s.key = o.shipment_key"
    " LEFT JOIN device_calibrations c ON c.id = o.calibration_id"
)


def add_override(
    conn: psycopg.Connection, *, org: int, assignment_id: int, lapsed: CalibrationRecord, reason: str,
    actor: str,
) -> OverrideRow:
    """Record QA's override of one assignment's calibration refusal, with its audit row."""
    row = conn.execute(
        "INSERT INTO calibration_overrides (org_id, assignment_id, device_key, shipment_key,"
        " calibration_id, status, reason, overridden_by)"
        " SELECT a.org_id, a.id, a.device_key, a.shipment_key, %s, 'overdue', %s, %s"
        " FROM device_assignments a WHERE a.id = %s AND a.org_id = %s RETURNING id",
        (lapsed.id, reason, actor, assignment_id, org),
    ).fetchone()
    assert row is not None
    with conn.cursor(row_factory=class_row(OverrideRow)) as cur:
        found = cur.execute(_OVERRIDE_SELECT + " WHERE o.id = %s", (row[0],)).fetchone()
    assert found is not None
    record(
        conn, org_id=org, actor=actor, action="calibration_override", entity="device", key=found.device_id,
        new={
            "override": found.id, "shipment": found.shipment_id, "from": found.rode_from.isoformat(),
            "to": None if found.rode_to is None else found.rode_to.isoformat(),
            "certificate_number": found.certificate_number,
            "due_on": None if found.due_on is None else found.due_on.isoformat(),
        },
        reason=reason,
    )
    return found


def overrides_for(conn: psycopg.Connection, *, org: int, shipment_keys: list[int]) -> list[OverrideRow]:
    """The overrides of these shipments' assignments, oldest first."""
    with conn.cursor(row_factory=class_row(OverrideRow)) as cur:
        return cur.execute(
            _OVERRIDE_SELECT + " WHERE o.org_id = %s AND o.shipment_key = ANY(%s) ORDER BY o.id",
            (org, shipment_keys),
        ).fetchall()


@dataclass(frozen=True, slots=True)
class DueCalibration:
    org_id: int
    device_key: int
    device_id: str
    due_on: date
    certificate_number: str


def coming_due(conn: psycopg.Connection, *, today: date, within_days: int) -> list[DueCalibration]:
    """Loggers whose latest certificate is due within `within_days` of today (or already past)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (c.device_key) c.org_id, c.device_key, d.id, c.due_on, c.certificate_number"
        " FROM device_calibrations c JOIN devices d ON d.key = c.device_key"
        " ORDER BY c.device_key, c.due_on DESC",
    ).fetchall()
    return [
        DueCalibration(int(o), int(k), i, due, n)
        for o, k, i, due, n in rows
        if (due - today).days <= within_days
    ]


def open_calibration_alerts(conn: psycopg.Connection) -> list[tuple[int, int, str]]:
    """(alert id, organization, episode key) of calibration alerts not resolved yet."""
    rows = conn.execute(
        "SELECT id, org_id, episode_key FROM alerts WHERE kind = 'calibration_due'"
        " AND state IN ('open', 'acknowledged')"
    ).fetchall()
    return [(int(a), int(o), str(k)) for a, o, k in rows]
