"""Evidence over HTTP: a lot's, a shipment's or an excursion's record in JSON, CSV, PDF, EPCIS or
a signed bundle; the platform's public key; and verification of a bundle or a PDF."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from api.deps import AppSettings, Caller, Conn
from coldchain.access import Permission
from coldchain.settings import Settings
from evidence import bundle, model, signing
from evidence.attach import verify_url
from evidence.epcis import epcis_bytes
from evidence.report import pdf_bytes
from evidence.tabular import csv_chunks, json_chunks

router = APIRouter(tags=["evidence"])
_MAX_UPLOAD = 2 << 30


class EvidenceFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PDF = "pdf"
    EPCIS = "epcis"
    BUNDLE = "bundle"


class PublicKey(BaseModel):
    algorithm: str
    key_id: str
    public_key_pem: str


class VerifyResult(BaseModel):
    authentic: bool
    reason: str
    file: str | None
    subject: dict[str, Any] | None
    record_sha256: str | None
    key_id: str | None


FormatQuery = Annotated[EvidenceFormat, Query(description="json, csv, pdf, epcis or bundle")]


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
    path = Path(name)
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


@router.get("/lots/{gtin}/{lot}/evidence", response_model=None)
def lot_evidence(gtin: str, lot: str, conn: Conn, caller: Caller, settings: AppSettings,
                 format: FormatQuery = EvidenceFormat.JSON) -> Response:
    """A lot across every leg: subject, legs, loggers, readings (both clocks), statistics,
    excursions with their lifecycle, notifications, profiles in force, stability budget."""
    caller.require(Permission.READ)
    return _respond(model.lot_evidence(conn, org=caller.org_id, gtin=gtin, lot=lot), format, settings)


@router.get("/shipments/{shipment_id}/evidence", response_model=None)
def shipment_evidence(shipment_id: str, conn: Conn, caller: Caller, settings: AppSettings,
                      format: FormatQuery = EvidenceFormat.JSON) -> Response:
    caller.require(Permission.READ)
    ev = model.shipment_evidence(conn, org=caller.org_id, shipment_id=shipment_id)
    return _respond(ev, format, settings)


@router.get("/alerts/{alert_id}/evidence", response_model=None)
def excursion_evidence(alert_id: int, conn: Conn, caller: Caller, settings: AppSettings,
                       format: FormatQuery = EvidenceFormat.JSON) -> Response:
    caller.require(Permission.READ)
    ev = model.excursion_evidence(conn, org=caller.org_id, alert_id=alert_id)
    return _respond(ev, format, settings)


@router.get("/evidence/public-key", response_model=PublicKey)
def public_key(caller: Caller, settings: AppSettings) -> PublicKey:
    """The Ed25519 key that signs every bundle and PDF: verification needs only this and the file."""
    key = signing.signing_key(settings.data_dir)
    return PublicKey(algorithm="Ed25519", key_id=key.key_id, public_key_pem=signing.public_pem(key.public))


@router.post("/evidence/verify", response_model=VerifyResult)
def verify(file: Annotated[UploadFile, File(description="an evidence bundle (zip) or PDF")],
           caller: Caller, settings: AppSettings) -> VerifyResult:
    """Whether a bundle or PDF is genuine (made by this platform and unchanged), and what it is."""
    key = signing.signing_key(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=settings.data_dir, prefix=".verify-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size = 0
            while chunk := file.file.read(1 << 20):
                size += len(chunk)
                if size > _MAX_UPLOAD:
                    return VerifyResult(authentic=False, reason="the file is larger than 2 GiB", file=None,
                                        subject=None, record_sha256=None, key_id=None)
                out.write(chunk)
        verdict = bundle.verify_path(path, key.public)
    finally:
        path.unlink(missing_ok=True)
    return VerifyResult(**verdict.to_dict())
