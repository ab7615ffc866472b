"""POST /imports: master data from an ERP in bulk (CSV or JSON lines), checked whole, all or nothing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import Caller, Conn
from coldchain.access import Permission
from erp.imports import Kind, run_import

router = APIRouter(tags=["imports"])

MAX_IMPORT_BYTES = 64 * 1024 * 1024


class ImportErrorPublic(BaseModel):
    row: int
    field: str | None
    reason: str


class ImportReportPublic(BaseModel):
    kind: str
    dry_run: bool
    committed: bool
    rows: int
    inserted: int
    updated: int
    unchanged: int
    changes: dict[str, dict[str, int]]
    errors: list[ImportErrorPublic]
    error_count: int
    errors_truncated: bool
    import_id: int | None
    sha256: str


_BODY = {
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}},
    },
    "required": True,
    "description": "CSV (header row; `,` or `;`; UTF-8 with or without BOM) or JSON lines",
}


@router.post(
    "/imports",
    response_model=ImportReportPublic,
    openapi_extra={"requestBody": _BODY},
    responses={
        200: {"description": "committed, or a dry run's report (nothing committed)"},
        413: {"description": "the file is larger than 64 MiB"},
        422: {"model": ImportReportPublic, "description": "rows failed; nothing was committed"},
    },
)
async def import_master_data(
    request: Request,
    conn: Conn,
    caller: Caller,
    kind: Annotated[Kind, Query(description="what the file holds")],
    dry_run: Annotated[bool, Query(description="check and count, commit nothing")] = False,
) -> Any:
    """Check every row; commit them all or none. A re-import of the same file changes nothing."""
    caller.require(Permission.REGISTER)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        return _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            return _too_large()
        chunks.append(chunk)
    data = b"".join(chunks)
    report = await run_in_threadpool(
        run_import, conn, org=caller.org_id, kind=kind, data=data, actor=caller.name, dry_run=dry_run
    )
    body = report.as_dict()
    return JSONResponse(body, status_code=422 if report.error_count else 200)


def _too_large() -> JSONResponse:
    return JSONResponse(
        {"error": "PayloadTooLarge", "message": f"an import may hold at most {MAX_IMPORT_BYTES} bytes"},
        status_code=413,
    )
