"""Logger export files read out at the end of a trip: upload, the device's report beside ours,
the original bytes, and saved CSV column mappings."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, File, Form, UploadFile, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from api.deps import AppSettings, Caller, Conn
from api.field_data import import_and_compare, mapping_for, stored_response
from coldchain.access import Permission
from coldchain.errors import ValidationError
from ingest.files.generic_csv import ColumnMapping
from storage import logger_files as store

router = APIRouter(tags=["logger files"])


class LoggerFilePublic(BaseModel):
    """A kept logger file: what was stored, the device's report and the platform's beside it."""

    id: int
    sha256: str
    filename: str | None
    size_bytes: int
    format: str
    device: str | None
    shipment: str | None
    readings: int
    stored: int
    duplicates: int
    missing: int
    refused: int = 0
    repeated: bool
    summary_only: bool
    uploaded_at: str
    device_report: dict[str, Any]
    platform_report: dict[str, Any] | None
    discrepancies: list[dict[str, Any]]


class ColumnMappingPublic(BaseModel):
    name: str
    mapping: dict[str, Any]

MAX_FILE_BYTES = 64 << 20


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or a wrong token"},
    403: {"description": "the caller may not register data"},
    404: {"description": "unknown shipment or column mapping"},
    409: {"description": "the logger is assigned to another shipment in the file's span"},
    413: {"description": "the file exceeds 64 MiB"},
    422: {"description": "the file cannot be read; the message names the line"},
}


@router.post(
    "/logger-files", status_code=status.HTTP_201_CREATED, response_model=LoggerFilePublic,
    responses={200: {"description": "the same file was kept before: nothing stored"}, **_ERRORS},
)
async def upload_logger_file(
    response: Response,
    conn: Conn,
    caller: Caller,
    settings: AppSettings,
    file: Annotated[UploadFile, File(description="the logger's export (Berlinger .txt, or CSV)")],
    device: Annotated[str | None, Form(description="device id (default: the file's serial)")] = None,
    shipment: Annotated[str | None, Form(description="the shipment the logger travelled with")] = None,
    mapping: Annotated[str | None, Form(description="a CSV column mapping, as JSON")] = None,
    mapping_name: Annotated[str | None, Form(description="the name of a saved column mapping")] = None,
) -> LoggerFilePublic | JSONResponse:
    """Import a read-out file: readings through the ingest writer, the original kept byte for byte.

    The same file uploaded again stores nothing (`stored: 0`, `repeated: true`); readings already
    stored for the logger (an overlapping file) count as `duplicates`.
    """
    caller.require(Permission.REGISTER)
    raw = await file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        return JSONResponse(
            {"error": "PayloadTooLarge", "message": f"the file exceeds {MAX_FILE_BYTES >> 20} MiB",
             "field": "file"},
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    inline: dict[str, Any] | None = None
    if mapping:
        try:
            inline = orjson.loads(mapping)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"mapping is not JSON: {exc}", field="mapping") from None
    column_mapping = mapping_for(conn, org=caller.org_id, mapping=inline, mapping_name=mapping_name)
    body = import_and_compare(
        conn, raw, org=caller.org_id, organization=caller.organization, actor=caller.name,
        settings=settings, filename=file.filename, device_id=device or None,
        shipment_id=shipment or None, mapping=column_mapping,
    )
    if body["repeated"]:
        response.status_code = status.HTTP_200_OK
    return LoggerFilePublic(**body)


@router.get("/logger-files", response_model=list[LoggerFilePublic], responses=_ERRORS)
def list_logger_files(conn: Conn, caller: Caller, device: str | None = None) -> list[LoggerFilePublic]:
    key = None
    if device is not None:
        key = store.device_key_of(conn, org=caller.org_id, device_id=device)
        if key is None:
            return []
    return [
        LoggerFilePublic(**stored_response(f, stored=f.stored, duplicates=f.duplicates, repeated=False))
        for f in store.list_files(conn, org=caller.org_id, device_key=key)
    ]


@router.get("/logger-files/{file_id}", response_model=LoggerFilePublic, responses=_ERRORS)
def get_logger_file(file_id: int, conn: Conn, caller: Caller) -> LoggerFilePublic:
    f = store.get_file(conn, org=caller.org_id, file_id=file_id)
    return LoggerFilePublic(**stored_response(f, stored=f.stored, duplicates=f.duplicates, repeated=False))


@router.get("/logger-files/{file_id}/original", responses=_ERRORS)
def get_original(file_id: int, conn: Conn, caller: Caller) -> Response:
    """The file exactly as uploaded (its signature fields untouched), with its SHA-256."""
    content, sha, name = store.file_content(conn, org=caller.org_id, file_id=file_id)
    disposition = f'attachment; filename="{(name or f"logger-file-{file_id}").replace(chr(34), "")}"'
    return Response(
        content, media_type="application/octet-stream",
        headers={"X-Content-SHA256": sha, "Content-Disposition": disposition},
    )


@router.put("/logger-files/mappings/{name}", response_model=ColumnMappingPublic, responses=_ERRORS)
def save_mapping(
    name: str, conn: Conn, caller: Caller, body: dict[str, Any] = Body(...)  # noqa: B008
) -> ColumnMappingPublic:
    """Save a CSV column mapping under a name, for the next uploads of that kind of export."""
    caller.require(Permission.REGISTER)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValidationError("a mapping name is 1-64 letters, digits, '_', '.' or '-'", field="name")
    mapping = ColumnMapping.from_dict(body).to_dict()
    with conn.transaction():
        store.save_mapping(conn, org=caller.org_id, name=name, mapping=mapping, actor=caller.name)
    return ColumnMappingPublic(name=name, mapping=mapping)


@router.get("/logger-files/mappings/{name}", response_model=ColumnMappingPublic, responses=_ERRORS)
def get_mapping(name: str, conn: Conn, caller: Caller) -> ColumnMappingPublic:
    return ColumnMappingPublic(name=name, mapping=store.get_mapping(conn, org=caller.org_id, name=name))
