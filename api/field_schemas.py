"""Request and response models of the field-data routes: logger export files and calibration
certificates. Built here from what storage returns (jsonb reports, records), never by storage."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from api.schemas import DEVICE_ID_PATTERN, LINE_PATTERN, Count, DeviceId, whole_number
from storage import logger_files as store
from storage.calibrations import CalibrationRecord

MAPPING_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# An IANA zone name (Europe/Berlin, UTC) or a fixed offset (+01:00); known zones only (422 else).
TIMEZONE_PATTERN = (
    r"^(?:[+-][0-9]{2}:?[0-9]{2}|[A-Za-z][A-Za-z0-9_+-]{0,29}(?:/[A-Za-z][A-Za-z0-9_+-]{0,29}){0,2})$"
)
Encoding = Literal["utf-8", "utf-8-sig", "cp1252", "windows-1252", "latin-1", "iso-8859-1"]
ColumnName = Annotated[str, Field(min_length=1, max_length=200, pattern=LINE_PATTERN)]
ColumnIndex = Annotated[int, Field(ge=0, le=10_000), BeforeValidator(whole_number)]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class _Open(BaseModel):
    """A report section: the named fields are always there; a device may print more."""

    model_config = ConfigDict(extra="allow")


# -- CSV column mappings ----------------------------------------------------------------------


class ColumnMappingIn(BaseModel):
    """How to read one kind of CSV export. Columns are header names, or 0-based indexes when
    `header` is false. `time_format` is a strftime pattern, `iso`, `epoch_s` or `epoch_ms`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    time_column: ColumnName | ColumnIndex = 0
    value_column: ColumnName | ColumnIndex = 1
    time_format: Annotated[str, Field(min_length=1, max_length=64, pattern=LINE_PATTERN)] = "iso"
    timezone: Annotated[str, Field(max_length=64, pattern=TIMEZONE_PATTERN)] = "UTC"
    delimiter: Annotated[str, Field(min_length=1, max_length=1, pattern=LINE_PATTERN)] = ","
    decimal: Annotated[str, Field(min_length=1, max_length=1, pattern=LINE_PATTERN)] = "."
    unit: Literal["C", "F"] = "C"
    encoding: Encoding = "utf-8"
    header: StrictBool = True
    skip_rows: Annotated[int, Field(ge=0, le=1000), BeforeValidator(whole_number)] = 0
    device: DeviceId | None = None


class ColumnMappingOut(_Out):
    name: str
    mapping: ColumnMappingIn


# -- logger files -----------------------------------------------------------------------------


class AlarmConfigOut(_Open):
    number: int | None = None
    side: str | None = None
    threshold_c: float | None = None
    delay_s: int | None = None
    mode: str | None = None


class DeviceAlarmOut(_Open):
    alarm: int | None = None
    side: str | None = None
    mode: str | None = None
    triggered_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    duration_s: float | None = None
    extreme_c: float | None = None
    day: str | None = None


class DeviceDayOut(_Open):
    date: str
    min_c: float | None = None
    min_ms: int | None = None
    max_c: float | None = None
    max_ms: int | None = None
    mean_c: float | None = None
    alarms: list[dict[str, Any]] = []
    sensor_timeout_min: int | None = None
    events: int | None = None
    checked: str | None = None


class DeviceReport(_Open):
    """The device's own results, as printed; times are epoch milliseconds (UTC)."""

    model: str | None = None
    serial: str | None = None
    interval_s: int | None = None
    summary_only: bool = False
    mkt_c: float | None = None
    mkt_delta_h_kj_mol: float | None = None
    min_c: float | None = None
    min_ms: int | None = None
    max_c: float | None = None
    max_ms: int | None = None
    mean_c: float | None = None
    start_ms: int | None = None
    stop_ms: int | None = None
    derived_from_days: bool = False
    alarm_config: list[AlarmConfigOut] = []
    alarms: list[DeviceAlarmOut] = []
    days: list[DeviceDayOut] = []
    settings: dict[str, Any] = {}


class NotComparedOut(_Open):
    check: str
    reason: str


class CalibrationOnDay(_Out):
    date: str
    status: Literal["calibrated", "due_soon", "overdue", "never"]
    certificate: str | None
    due_on: str | None


class PlatformReport(_Open):
    """The platform's evaluation of the file's readings (None fields: no series to evaluate)."""

    source: str
    readings: int
    first: str | None = None
    last: str | None = None
    interval_s: int | None = None
    mkt_c: float | None = None
    mkt_delta_h_over_r_k: float | None = None
    min_c: float | None = None
    max_c: float | None = None
    mean_c: float | None = None
    covers_whole_run: bool | None = None
    excursions: list[dict[str, Any]] = []
    days: list[dict[str, Any]] = []
    not_compared: list[NotComparedOut] = []
    calibration: dict[str, CalibrationOnDay] = {}


class Discrepancy(_Open):
    """A device result the logged readings cannot explain; `device` and `platform` are the two
    values (a number, a time, a [low, high] range, or null when one side has nothing)."""

    check: str
    subject: str | None = None
    device: Any = None
    platform: Any = None
    detail: str


class LoggerFileReport(_Out):
    """A kept logger file: what was stored, the device's report and the platform's beside it."""

    id: int
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    filename: str | None
    size_bytes: Count
    format: str
    device: str | None
    shipment: str | None
    readings: Count
    stored: Count
    duplicates: Count
    missing: Count
    refused: Count = 0
    repeated: bool
    summary_only: bool
    uploaded_at: datetime
    device_report: DeviceReport
    platform_report: PlatformReport | None
    discrepancies: list[Discrepancy]


def logger_file_out(
    kept: store.StoredFile, *, stored: int, duplicates: int, repeated: bool, refused: int = 0
) -> LoggerFileReport:
    return LoggerFileReport(
        id=kept.id, sha256=kept.sha256, filename=kept.filename, size_bytes=kept.size_bytes,
        format=kept.format, device=kept.device_id, shipment=kept.shipment_id,
        readings=kept.readings, stored=stored, duplicates=duplicates, missing=kept.missing,
        refused=refused, repeated=repeated, summary_only=bool(kept.device_report.get("summary_only")),
        uploaded_at=kept.uploaded_at,
        device_report=DeviceReport.model_validate(kept.device_report),
        platform_report=(
            None if kept.platform_report is None else PlatformReport.model_validate(kept.platform_report)
        ),
        discrepancies=[Discrepancy.model_validate(d) for d in kept.discrepancies],
    )


# -- calibration certificates -----------------------------------------------------------------


class ReferencePointOut(_Out):
    reference_c: float
    reading_c: float
    offset_c: float


class CalibrationOut(_Out):
    id: int
    device: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    performed_on: date
    due_on: date
    laboratory: str
    certificate_number: str
    reference_points: list[ReferencePointOut]
    certificate_pdf: bool
    certificate_sha256: str | None
    recorded_by: str
    recorded_at: datetime


class CalibrationsOut(_Out):
    device: str
    status: Literal["calibrated", "due_soon", "overdue", "never"]
    due_on: date | None
    certificates: list[CalibrationOut]


def calibration_out(rec: CalibrationRecord) -> CalibrationOut:
    cert = rec.certificate
    return CalibrationOut(
        id=rec.id, device=rec.device_id, performed_on=cert.performed_on, due_on=cert.due_on,
        laboratory=cert.laboratory, certificate_number=cert.certificate_number,
        reference_points=[
            ReferencePointOut(reference_c=p.reference_c, reading_c=p.reading_c, offset_c=p.offset_c)
            for p in cert.reference_points
        ],
        certificate_pdf=rec.certificate_sha256 is not None, certificate_sha256=rec.certificate_sha256,
        recorded_by=rec.recorded_by, recorded_at=rec.recorded_at,
    )
