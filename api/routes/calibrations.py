"""Calibration certificates of loggers: recorded with their PDF, listed with the status today."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, File, Form, Path, UploadFile, status
from fastapi.responses import Response

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.field_schemas import CalibrationOut, CalibrationsOut, calibration_out
from api.schemas import DEVICE_ID_PATTERN, LINE_PATTERN, MAX_SAFE_INT, Day
from coldchain.access import Permission
from coldchain.calibration import CalibrationCertificate, ReferencePoint
from coldchain.errors import PermissionDeniedError, ValidationError
from storage import calibrations, registry

router = APIRouter(tags=["calibration"])

MAX_PDF_BYTES = 16 << 20
MAX_POINTS_CHARS = 8192

DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["TRK-0042-L1"])]
CalibrationPath = Annotated[int, Path(ge=1, le=MAX_SAFE_INT, examples=[1])]
_ADD = responses(*WITH_BODY, 404, 409)
_ADD[409]["description"] = "The certificate number is already recorded for this device"
_ADD[422]["description"] = "due_on not after performed_on, bad reference points, or not a PDF"
_PDF = {
    200: {
        "description": "The certificate PDF as received",
        "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
    },
    **responses(*AUTHED, 404),
}


def _points(raw: str | None) -> tuple[ReferencePoint, ...]:
    if not raw:
        return ()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"reference_points is not JSON: {exc}", field="reference_points") from None
    if not isinstance(parsed, list):
        raise ValidationError("reference_points is a list", field="reference_points")
    return tuple(ReferencePoint.from_dict(p) for p in parsed)


@router.post(
    "/devices/{device_id}/calibrations", status_code=status.HTTP_201_CREATED, response_model=CalibrationOut,
    responses=_ADD,
)
async def add_calibration(
    device_id: DevicePath,
    conn: Conn,
    caller: Caller,
    performed_on: Annotated[Day, Form(description="the day the laboratory calibrated the logger")],
    due_on: Annotated[Day, Form(description="the day the certificate holds to; after performed_on")],
    laboratory: Annotated[str, Form(min_length=1, max_length=200, pattern=LINE_PATTERN)],
    certificate_number: Annotated[str, Form(min_length=1, max_length=200, pattern=LINE_PATTERN)],
    reference_points: Annotated[
        str | None,
        Form(
            max_length=MAX_POINTS_CHARS,
            description='JSON: [{"reference_c": 5.0, "reading_c": 5.1, "offset_c": 0.1}]',
        ),
    ] = None,
    certificate: Annotated[
        UploadFile | None, File(description="the certificate (PDF, at most 16 MiB)")
    ] = None,
) -> CalibrationOut:
    """Record a calibration certificate of a logger, with its PDF when given."""
    if not (caller.can(Permission.REGISTER) or caller.can(Permission.DISPOSITION)):
        raise PermissionDeniedError(f"role {caller.role.value!r} may not record calibrations")
    cert = CalibrationCertificate(
        performed_on=performed_on, due_on=due_on, laboratory=laboratory,
        certificate_number=certificate_number, reference_points=_points(reference_points),
    )
    pdf = None
    if certificate is not None:
        pdf = await certificate.read(MAX_PDF_BYTES + 1)
        if len(pdf) > MAX_PDF_BYTES or not pdf.startswith(b"%PDF-"):
            raise ValidationError("the certificate must be a PDF of at most 16 MiB", field="certificate")
    with conn.transaction():
        rec = calibrations.add_certificate(
            conn, org=caller.org_id, device_id=device_id, certificate=cert, pdf=pdf, actor=caller.name
        )
    return calibration_out(rec)


@router.get(
    "/devices/{device_id}/calibrations", response_model=CalibrationsOut, responses=responses(*AUTHED, 404)
)
def list_calibrations(device_id: DevicePath, conn: Conn, caller: Caller) -> CalibrationsOut:
    """Every certificate of the logger and its status today (calibrated, due_soon, overdue, never)."""
    caller.require(Permission.READ)
    device = registry.get_device(conn, org=caller.org_id, device_id=device_id)
    records = calibrations.list_certificates(conn, org=caller.org_id, device_id=device_id)
    today = datetime.now(UTC).date()
    state, current = calibrations.status_of(conn, device.key, today)
    return CalibrationsOut(
        device=device_id,
        status=state.value,
        due_on=current.certificate.due_on if current else None,
        certificates=[calibration_out(r) for r in records],
    )


@router.get(
    "/devices/{device_id}/calibrations/{calibration_id}/certificate", response_class=Response, responses=_PDF
)
def get_calibration_certificate(
    device_id: DevicePath, calibration_id: CalibrationPath, conn: Conn, caller: Caller
) -> Response:
    """The certificate PDF of one calibration (404 when none was uploaded)."""
    caller.require(Permission.READ)
    pdf = calibrations.certificate_pdf(
        conn, org=caller.org_id, device_id=device_id, calibration_id=calibration_id
    )
    return Response(pdf, media_type="application/pdf")
