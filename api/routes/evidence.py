"""Evidence over HTTP: a lot's, a shipment's or an excursion's record in JSON, CSV, PDF, EPCIS or
a signed bundle; the platform's public key; and verification of a bundle or a PDF."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Path, Query, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api import partner_view
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.routes.lots import GtinPath, LotPath
from api.routes.registry import ShipmentPath
from api.schemas import MAX_SAFE_INT, EvidenceRecord, PublicKeyOut, VerifyResult, check_gtin
from coldchain.access import Permission
from coldchain.gs1 import normalize_gtin
from coldchain.settings import Settings
from evidence import bundle, model, signing
from evidence.attach import verify_url
from evidence.epcis import epcis_bytes
from evidence.report import pdf_bytes
from evidence.tabular import csv_chunks, json_chunks

router = APIRouter(tags=["evidence"])
# An upload to verify may be a large bundle: the request guard lets this path's body through up
# to this size (api/app.py) and the route counts it again while spooling it to disk.
MAX_UPLOAD_BYTES = 2 << 30


class EvidenceFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PDF = "pdf"
    EPCIS = "epcis"
    BUNDLE = "bundle"


FormatQuery = Annotated[
    EvidenceFormat,
    Query(description="`json` (the record), `csv` (one row a reading), `pdf` (the signed report),"
          " `epcis` (EPCIS 2.0 JSON-LD) or `bundle` (a sealed zip of all of them)"),
]
AlertPath = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]


class VerifyForm(BaseModel):
    """The upload to verify: one part, `file`; other parts are refused, as unknown body keys are."""

    model_config = ConfigDict(extra="forbid")

    file: UploadFile = Field(description="an evidence bundle (zip) or PDF")

# The formats besides the JSON record, by media type, as the 200 answer documents them.
_FILES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The evidence in the format asked for: `json` the record (this schema);"
        " the others a file download (Content-Disposition: attachment)",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            "application/ld+json": {"schema": {"type": "object"}},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_EVIDENCE_RESPONSES = {**_FILES, **responses(*AUTHED, 404)}


def _respond(ev: model.Evidence, fmt: EvidenceFormat, settings: Settings) -> Response:
    stem = ev.file_stem
    key = signing.signing_key(settings.data_dir)

    def attachment(ext: str) -> dict[str, str]:
        return {"Content-Disposition": f'attachment; filename="{stem}.{ext}"'}

    if fmt is EvidenceFormat.JSON:
        return StreamingResponse(json_chunks(ev), media_type="application/json")
    if fmt is EvidenceFormat.CSV:
        return StreamingResponse(csv_chunks(ev), media_type="text/csv; charset=utf-8",
                                 headers=attachment("csv"))
    if fmt is EvidenceFormat.EPCIS:
        return Response(epcis_bytes(ev), media_type="application/ld+json", headers=attachment("jsonld"))
    if fmt is EvidenceFormat.PDF:
        pdf = pdf_bytes(ev, record_sha256=bundle.record_sha256(ev), verify_url=verify_url(settings), key=key)
        return Response(pdf, media_type="application/pdf", headers=attachment("pdf"))
    # The bundle is written to a temporary file in the data folder, then streamed and removed.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=settings.data_dir, prefix=".bundle-", suffix=".zip")
    path = FilePath(name)
    try:
        with os.fdopen(fd, "w+b") as handle:
            bundle.write_bundle(ev, handle, key=key, verify_url=verify_url(settings))
    except BaseException:
        path.unlink(missing_ok=True)
        raise

    def stream() -> Iterator[bytes]:
        try:
            yield from bundle.iter_file(path)
        finally:
            path.unlink(missing_ok=True)

    return StreamingResponse(stream(), media_type="application/zip",
                             headers={**attachment("zip"), "Content-Length": str(path.stat().st_size)})


@router.get("/lots/{gtin}/{lot}/evidence", response_model=EvidenceRecord, responses=_EVIDENCE_RESPONSES)
def lot_evidence(gtin: GtinPath, lot: LotPath, conn: Conn, caller: Caller, settings: AppSettings,
                 format: FormatQuery = EvidenceFormat.JSON) -> Response:
    """A lot across every leg: subject, legs, loggers, readings (both clocks), statistics,
    excursions with their lifecycle, notifications, profiles in force, stability budget."""
    caller.require(Permission.READ)
    org, rec = partner_view.lot(conn, caller, normalize_gtin(check_gtin(gtin)), lot, need="evidence")
    shared = rec if org != caller.org_id else None  # a partner: the legs shared with "evidence" only
    ev = model.lot_evidence(conn, org=org, gtin=rec.lot.gtin, lot=rec.lot.lot, shared=shared)
    return _respond(ev, format, settings)


@router.get("/shipments/{shipment_id}/evidence", response_model=EvidenceRecord,
            responses=_EVIDENCE_RESPONSES)
def shipment_evidence(shipment_id: ShipmentPath, conn: Conn, caller: Caller, settings: AppSettings,
                      format: FormatQuery = EvidenceFormat.JSON) -> Response:
    """One shipment: its loggers, readings, excursions and the lots it carried."""
    caller.require(Permission.READ)
    org = partner_view.evidence_shipment_org(conn, caller, shipment_id)
    ev = model.shipment_evidence(conn, org=org, shipment_id=shipment_id, partner=org != caller.org_id)
    return _respond(ev, format, settings)


@router.get("/alerts/{alert_id}/evidence", response_model=EvidenceRecord, responses=_EVIDENCE_RESPONSES)
def excursion_evidence(alert_id: AlertPath, conn: Conn, caller: Caller, settings: AppSettings,
                       format: FormatQuery = EvidenceFormat.JSON) -> Response:
    """One excursion: its shipment's loggers judged over the whole leg, the readings from two
    hours before it to two hours after, its lifecycle. 404 also for an alert with no shipment."""
    caller.require(Permission.READ)
    org = partner_view.evidence_alert_org(conn, caller, alert_id)
    ev = model.excursion_evidence(conn, org=org, alert_id=alert_id, partner=org != caller.org_id)
    return _respond(ev, format, settings)


@router.get("/evidence/public-key", response_model=PublicKeyOut, responses=responses(*AUTHED))
def public_key(caller: Caller, settings: AppSettings) -> PublicKeyOut:
    """The Ed25519 key that signs every bundle and PDF: verification needs only this and the file."""
    caller.require(Permission.READ)
    key = signing.signing_key(settings.data_dir)
    return PublicKeyOut(algorithm="Ed25519", key_id=key.key_id, public_key_pem=signing.public_pem(key.public))


@router.post(
    "/evidence/verify",
    response_model=VerifyResult,
    responses=responses(*WITH_BODY),
)
def verify(form: Annotated[VerifyForm, File()], caller: Caller, settings: AppSettings) -> VerifyResult:
    """Whether a bundle or PDF is genuine (made by this platform and unchanged), and what it is.
    Any file is answered: one that is not a genuine bundle or PDF gets `authentic: false` and the
    reason. 413 above 2 GiB."""
    caller.require(Permission.READ)
    key = signing.signing_key(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=settings.data_dir, prefix=".verify-")
    path = FilePath(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size = 0
            while chunk := form.file.file.read(1 << 20):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"the file is larger than {MAX_UPLOAD_BYTES} bytes")
                out.write(chunk)
        verdict = bundle.verify_path(path, key.public)
    finally:
        path.unlink(missing_ok=True)
    return VerifyResult(
        authentic=verdict.authentic, reason=verdict.reason, file=verdict.kind, subject=verdict.subject,
        record_sha256=verdict.record_sha256, key_id=verdict.key_id,
    )
