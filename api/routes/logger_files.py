"""Logger export files read out at the end of a trip: upload, the device's report beside ours,
the original bytes, and saved CSV column mappings."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, File, Form, Path, Query, UploadFile, status
from fastapi.responses import Response

from api import partner_view
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, error_response, responses
from api.field_data import import_and_compare, mapping_for
from api.field_schemas import (
    MAPPING_NAME_PATTERN,
    ColumnMappingIn,
    ColumnMappingOut,
    LoggerFileReport,
    logger_file_out,
)
from api.schemas import DEVICE_ID_PATTERN, MAX_SAFE_INT, SHIPMENT_ID_PATTERN
from coldchain.access import Permission
from coldchain.errors import ValidationError
from ingest.files.generic_csv import ColumnMapping
from storage import logger_files as store

router = APIRouter(tags=["logger files"])

MAX_FILE_BYTES = 64 << 20
MAX_MAPPING_CHARS = 4096

FileIdPath = Annotated[int, Path(ge=1, le=MAX_SAFE_INT, examples=[1])]
MappingNamePath = Annotated[str, Path(pattern=MAPPING_NAME_PATTERN, examples=["acme-csv"])]

_UPLOAD = {
    200: {"model": LoggerFileReport, "description": "The same file was kept before: nothing stored"},
    **responses(*WITH_BODY, 404, 409),
}
_UPLOAD[404]["description"] = "Unknown shipment or column mapping"
_UPLOAD[409]["description"] = "The logger rode with another shipment during the file's span"
_UPLOAD[422]["description"] = "The file cannot be read (the message names the line), or a bad mapping"
_ORIGINAL = {
    200: {
        "description": "The file exactly as uploaded; `X-Content-SHA256` carries its SHA-256",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "X-Content-SHA256": {"description": "SHA-256 of the bytes (hex)", "schema": {"type": "string"}},
            "Content-Disposition": {
                "description": "attachment; the uploaded name", "schema": {"type": "string"}
            },
        },
    },
    **responses(*AUTHED, 404),
}


@router.post(
    "/logger-files", status_code=status.HTTP_201_CREATED, response_model=LoggerFileReport,
    responses=_UPLOAD,
)
async def upload_logger_file(
    response: Response,
    conn: Conn,
    caller: Caller,
    settings: AppSettings,
    file: Annotated[
        UploadFile, File(description="the logger's export (Berlinger .txt, or CSV); at most 64 MiB")
    ],
    device: Annotated[
        str | None, Form(pattern=DEVICE_ID_PATTERN, description="device id (default: the file's serial)")
    ] = None,
    shipment: Annotated[
        str | None, Form(pattern=SHIPMENT_ID_PATTERN, description="the shipment the logger travelled with")
    ] = None,
    mapping: Annotated[
        str | None,
        Form(max_length=MAX_MAPPING_CHARS, description="a CSV column mapping as JSON (see ColumnMappingIn)"),
    ] = None,
    mapping_name: Annotated[
        str | None, Form(pattern=MAPPING_NAME_PATTERN, description="the name of a saved column mapping")
    ] = None,
) -> Any:
    """Import a read-out file: readings through the ingest writer, the original kept byte for byte.

    201 with the report when the file is new; the same file uploaded again stores nothing and
    answers 200 (`stored: 0`, `repeated: true`). Readings already stored for the logger (an
    overlapping file) count as `duplicates`.
    """
    caller.require(Permission.REGISTER)
    raw = await file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        return error_response(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"the file exceeds {MAX_FILE_BYTES >> 20} MiB",
            field="file",
        )
    inline: dict[str, Any] | None = None
    if mapping:
        try:
            parsed = orjson.loads(mapping)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"mapping is not JSON: {exc}", field="mapping") from None
        inline = _mapping(parsed, field="mapping")
    column_mapping = mapping_for(conn, org=caller.org_id, mapping=inline, mapping_name=mapping_name)
    body = import_and_compare(
        conn, raw, org=caller.org_id, organization=caller.organization, actor=caller.name,
        settings=settings, filename=file.filename, device_id=device or None,
        shipment_id=shipment or None, mapping=column_mapping,
    )
    if body["repeated"]:
        response.status_code = status.HTTP_200_OK
    return LoggerFileReport.model_validate(body)


def _mapping(raw: object, *, field: str) -> dict[str, Any]:
    """A mapping checked against its request model (the 422 names the mapping's field)."""
    from pydantic import ValidationError as PydanticError

    try:
        return ColumnMappingIn.model_validate(raw).model_dump()
    except PydanticError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise ValidationError(
            f"{field}.{where}: {err.get('msg')}" if where else f"{field}: {err.get('msg')}",
            field=f"{field}.{where}" if where else field,
        ) from None


@router.get("/logger-files", response_model=list[LoggerFileReport], responses=responses(*AUTHED))
def list_logger_files(
    conn: Conn,
    caller: Caller,
    device: Annotated[
        str | None, Query(pattern=DEVICE_ID_PATTERN, description="only this logger's files")
    ] = None,
) -> list[LoggerFileReport]:
    """The kept files of the organization, or of one logger; a partner also sees the files of
    shipments shared with it with "readings"."""
    caller.require(Permission.READ)
    key = None if device is None else store.device_key_of(conn, org=caller.org_id, device_id=device)
    unknown = device is not None and key is None  # not the caller's logger: none of its own files
    own = [] if unknown else store.list_files(conn, org=caller.org_id, device_key=key)
    return [
        logger_file_out(f, stored=f.stored, duplicates=f.duplicates, repeated=False)
        for f in own + partner_view.shared_logger_files(conn, caller, device)
    ]


@router.get("/logger-files/{file_id}", response_model=LoggerFileReport, responses=responses(*AUTHED, 404))
def get_logger_file(file_id: FileIdPath, conn: Conn, caller: Caller) -> LoggerFileReport:
    """One kept file with its reports (a partner's: of a shipment shared with "readings")."""
    caller.require(Permission.READ)
    _, f = partner_view.logger_file(conn, caller, file_id)
    return logger_file_out(f, stored=f.stored, duplicates=f.duplicates, repeated=False)


@router.get("/logger-files/{file_id}/original", response_class=Response, responses=_ORIGINAL)
def get_logger_file_original(file_id: FileIdPath, conn: Conn, caller: Caller) -> Response:
    """The file exactly as uploaded (its signature fields untouched), with its SHA-256."""
    caller.require(Permission.READ)
    org, _ = partner_view.logger_file(conn, caller, file_id)
    content, sha, name = store.file_content(conn, org=org, file_id=file_id)
    safe = "".join(ch for ch in (name or "") if 0x20 <= ord(ch) < 0x7F and ch not in '"\\')
    disposition = f'attachment; filename="{safe or f"logger-file-{file_id}"}"'
    return Response(
        content, media_type="application/octet-stream",
        headers={"X-Content-SHA256": sha, "Content-Disposition": disposition},
    )


@router.put(
    "/logger-files/mappings/{name}", response_model=ColumnMappingOut, responses=responses(*WITH_BODY)
)
def save_mapping(
    name: MappingNamePath, body: ColumnMappingIn, conn: Conn, caller: Caller
) -> ColumnMappingOut:
    """Save a CSV column mapping under a name, for the next uploads of that kind of export."""
    caller.require(Permission.REGISTER)
    mapping = ColumnMapping.from_dict(body.model_dump()).to_dict()
    with conn.transaction():
        store.save_mapping(conn, org=caller.org_id, name=name, mapping=mapping, actor=caller.name)
    return ColumnMappingOut(name=name, mapping=ColumnMappingIn.model_validate(mapping))


@router.get(
    "/logger-files/mappings/{name}", response_model=ColumnMappingOut, responses=responses(*AUTHED, 404)
)
def get_mapping(name: MappingNamePath, conn: Conn, caller: Caller) -> ColumnMappingOut:
    """A saved CSV column mapping."""
    caller.require(Permission.READ)
    saved = store.get_mapping(conn, org=caller.org_id, name=name)
    return ColumnMappingOut(name=name, mapping=ColumnMappingIn.model_validate(saved))
