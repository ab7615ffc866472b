"""The audit trail: filtered reads, a printable report per record, and the chain's verification."""

from __future__ import annotations

import html
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, responses
from api.identity_schemas import AuditEntry, TrailVerification
from api.schemas import LINE_PATTERN, MAX_SAFE_INT, Moment
from coldchain.access import Permission
from coldchain.errors import NotFoundError
from storage import audit, signatures

router = APIRouter(tags=["audit"])


def _json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route whose success is not JSON: still the JSON error shape."""
    error = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        code: {"description": doc["description"], "content": {"application/json": {"schema": error}}}
        for code, doc in responses(*codes).items()
    }


Text = Annotated[str, Query(min_length=1, max_length=200, pattern=LINE_PATTERN)]


@router.get("/audit", response_model=list[AuditEntry], responses=responses(*AUTHED))
def read_trail(
    conn: Conn,
    caller: Caller,
    entity: Text | None = None,
    id: Text | None = None,
    actor: Text | None = None,
    action: Text | None = None,
    from_: Annotated[Moment | None, Query(alias="from", description="RFC 3339 with an offset")] = None,
    to: Annotated[Moment | None, Query(description="RFC 3339 with an offset; exclusive")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SAFE_INT, description="page on: the last id seen")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[AuditEntry]:
    """Who, what, when, why, old and new value; oldest first."""
    caller.require(Permission.READ_AUDIT)
    found = audit.search(
        conn,
        org_id=caller.org_id,
        entity=entity,
        key=id,
        actor=actor,
        action=action,
        since=from_,
        until=to,
        after_id=after,
        limit=limit,
    )
    return [AuditEntry.model_validate(r) for r in found]


@router.get(
    "/audit/report",
    response_class=HTMLResponse,
    responses={200: {"description": "a page to print"}, **_json_errors(*AUTHED, 404)},
)
def printable_report(entity: Text, id: Text, conn: Conn, caller: Caller) -> HTMLResponse:
    """One record's whole trail and signatures as a page to print (Part 11 §11.10(e), §11.50)."""
    caller.require(Permission.READ_AUDIT)
    rows = audit.search(conn, org_id=caller.org_id, entity=entity, key=id, limit=5000)
    signed = signatures.for_record(conn, org=caller.org_id, entity=entity, key=id, current_record=None)
    if not rows and not signed:
        raise NotFoundError(entity, id)
    esc = html.escape

    def value(v: Any) -> str:
        return "" if v is None else esc(json.dumps(v, sort_keys=True, ensure_ascii=False))

    body = "".join(
        f"<tr><td>{r['id']}</td><td>{esc(r['at'].isoformat())}</td><td>{esc(r['actor'])}</td>"
        f"<td>{esc(r['action'])}</td><td>{esc(r['reason'] or '')}</td><td>{value(r['old'])}</td>"
        f"<td>{value(r['new'])}</td></tr>"
        for r in rows
    )
    sigs = "".join(f"<li>{esc(s.manifestation())} (record {esc(s.record_hash)})</li>" for s in signed)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Audit report: {esc(entity)} {esc(id)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:4px;vertical-align:top;font-size:12px}</style></head><body>"
        f"<h1>Audit report: {esc(entity)} {esc(id)}</h1>"
        f"<p>Organization {esc(caller.organization)}; printed by {esc(caller.name)}; times in UTC.</p>"
        f"<h2>Signatures</h2><ul>{sigs or '<li>none</li>'}</ul>"
        "<h2>Trail</h2><table><tr><th>#</th><th>when</th><th>who</th><th>what</th><th>why</th>"
        f"<th>old value</th><th>new value</th></tr>{body}</table></body></html>"
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get("/audit/verify", response_model=TrailVerification, responses=responses(*AUTHED, 404))
def verify_audit_trail(conn: Conn, caller: Caller, settings: AppSettings) -> TrailVerification:
    """Every link and the recorded head of every organization's chain, and every checkpoint
    signed with the platform key (platform admins only)."""
    from api.identity_cli import platform_verifier

    if not caller.platform_admin:
        raise NotFoundError("route", "/audit/verify")
    verifier = platform_verifier(settings)
    verdict = audit.verify_trail(
        conn,
        verify=None if verifier is None else verifier[0],
        key_id=None if verifier is None else verifier[1],
    )
    return TrailVerification(
        intact=verdict.intact,
        rows=verdict.rows,
        organizations=verdict.organizations,
        org_id=verdict.org_id,
        row_id=verdict.row_id,
        reason=verdict.reason,
        signed_checkpoints=verdict.signed_checkpoints,
        unchecked_checkpoints=verdict.unchecked_checkpoints,
    )
