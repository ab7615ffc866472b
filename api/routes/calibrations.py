"""Calibration certificates of loggers: recorded with their PDF, listed with the status today."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import Response

from api.deps import Caller, Conn
from coldchain.access import Permission
from coldchain.calibration import CalibrationCertificate, ReferencePoint
from coldchain.errors import PermissionDeniedError, ValidationError
from storage import calibrations, registry

router = APIRouter(tags=["calibration"])

MAX_PDF_BYTES = 16 << 20
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or a wrong token"},
    403: {"description": "the caller may not record calibrations"},
    404: {"description": "unknown device or certificate"},
    409: {"description": "the certificate number is already recorded for this device"},
    422: {"description": "invalid dates, reference points or PDF"},
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


@router.post("/devices/{device_id}/calibrations", status_code=status.HTTP_201_CREATED, responses=_ERRORS)
async def add_calibration(
    device_id: str,
    conn: Conn,
    caller: Caller,
    performed_on: Annotated[date, Form()],
    due_on: Annotated[date, Form()],
    laboratory: Annotated[str, Form()],
    certificate_number: Annotated[str, Form()],
    reference_points: Annotated[
        str | None, Form(description='JSON: [{"reference_c": 5.0, "reading_c": 5.1, "offset_c": 0.1}]')
    ] = None,
    certificate: Annotated[UploadFile | None, File(description="the certificate (PDF)")] = None,
) -> dict[str, Any]:
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
    return rec.to_dict()


@router.get("/devices/{device_id}/calibrations", responses=_ERRORS)
def list_calibrations(device_id: str, conn: Conn, caller: Caller) -> dict[str, Any]:
    """Every certificate of the logger and its status today (calibrated, due_soon, overdue, never)."""
    device = registry.get_device(conn, org=caller.org_id, device_id=device_id)
    records = calibrations.list_certificates(conn, org=caller.org_id, device_id=device_id)
    today = datetime.now(UTC).date()
    state, current = calibrations.status_of(conn, device.key, today)
    return {
        "device": device_id,
        "status": state.value,
        "due_on": current.certificate.due_on.isoformat() if current else None,
        "certificates": [r.to_dict() for r in records],
    }


@router.get("/devices/{device_id}/calibrations/{calibration_id}/certificate", responses=_ERRORS)
def get_certificate(device_id: str, calibration_id: int, conn: Conn, caller: Caller) -> Response:
    pdf = calibrations.certificate_pdf(
        conn, org=caller.org_id, device_id=device_id, calibration_id=calibration_id
    )
    return Response(pdf, media_type="application/pdf")
