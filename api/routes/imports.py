"""POST /imports: master data from an ERP in bulk (CSV or JSON lines), checked whole, all or nothing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import Caller, Conn
from api.errors import WITH_BODY, responses
from api.schemas import ErrorBody, FieldProblem, _Out
from coldchain.access import Permission
from erp.imports import ImportReport, Kind, run_import

router = APIRouter(tags=["imports"])

# The request guard's limit for this path (api/app.py); other routes keep the general one.
MAX_IMPORT_BYTES = 64 * 1024 * 1024


class ImportRowError(_Out):
    row: int
    field: str | None
    reason: str


class ImportReportOut(_Out):
    kind: Kind
    dry_run: bool
    committed: bool
    rows: int
    inserted: int
    updated: int
    unchanged: int
    changes: dict[str, dict[str, int]]
    errors: list[ImportRowError]
    error_count: int
    errors_truncated: bool
    import_id: int | None
    sha256: str


def report_out(report: ImportReport) -> ImportReportOut:
    return ImportReportOut(
        kind=report.kind,
        dry_run=report.dry_run,
        committed=report.committed,
        rows=report.rows,
        inserted=report.inserted,
        updated=report.updated,
        unchanged=report.unchanged,
        changes=report.changes,
        errors=[ImportRowError(row=e.row, field=e.field, reason=e.reason) for e in report.errors],
        error_count=report.error_count,
        errors_truncated=report.error_count > len(report.errors),
        import_id=report.import_id,
        sha256=report.sha256,
    )


_BODY = {
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}},
    },
    "required": True,
    "description": "CSV (header row; `,` or `;`; UTF-8 with or without BOM) or JSON lines",
}

_RESPONSES = responses(*WITH_BODY)
_RESPONSES[413] = {**_RESPONSES[413], "description": f"The file is larger than {MAX_IMPORT_BYTES} bytes"}
_RESPONSES[422] = {
    **_RESPONSES[422],
    "description": "A bad parameter, or rows failed and nothing was committed: then `field` is `body`,"
    " `details` names the first failures (`row N.field`) and the error body also carries `report`,"
    " the whole import report (as the 200 answer's schema, with every row error up to 1000)",
}


@router.post(
    "/imports",
    response_model=ImportReportOut,
    openapi_extra={"requestBody": _BODY},
    responses=_RESPONSES,
)
async def import_master_data(
    request: Request,
    conn: Conn,
    caller: Caller,
    kind: Annotated[Kind, Query(description="what the file holds")],
    dry_run: Annotated[bool, Query(description="check and count, commit nothing")] = False,
) -> Any:
    """Check every row; commit them all or none (200 with the report, or 422 when rows failed).
    A re-import of the same file changes nothing. Without QA's change_profile, a row changing a
    registered product's labelled range, stability budget, activation energy or default profile
    (or a registered lot's budget) fails: those are QA's to change."""
    caller.require(Permission.REGISTER)
    data = await request.body()
    report = await run_in_threadpool(
        run_import,
        conn,
        org=caller.org_id,
        kind=kind,
        data=data,
        actor=caller.name,
        dry_run=dry_run,
        may_change_limits=caller.can(Permission.CHANGE_PROFILE),
    )
    out = report_out(report)
    if not report.error_count:
        return out
    failed = "a row" if report.error_count == 1 else f"{report.error_count} rows"
    body = ErrorBody(
        error="ValidationError",
        message=f"{failed} failed; nothing was committed",
        field="body",
        details=[
            FieldProblem(field=f"row {e.row}" + (f".{e.field}" if e.field else ""), message=e.reason)
            for e in report.errors[:20]
        ],
    )
    return JSONResponse(
        {**body.model_dump(mode="json", exclude_none=True), "report": out.model_dump(mode="json")},
        status_code=422,
    )
