"""The audit trail: filtered reads, a printable report per record, and the chain's verification."""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from api.deps import Caller, Conn
from coldchain.access import Permission
from coldchain.errors import NotFoundError, ValidationError
from storage import audit, signatures

router = APIRouter(tags=["audit"])


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValidationError(f"{name} needs a UTC offset", field=name)


@router.get("/audit")
def read_trail(
    conn: Conn,
    caller: Caller,
    entity: str | None = None,
    id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    after: Annotated[int | None, Query(ge=0, description="page on: the last id seen")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    """Who, what, when, why, old and new value; oldest first."""
    caller.require(Permission.READ_AUDIT)
    _aware("from", from_)
    _aware("to", to)
    return audit.search(
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


@router.get("/audit/report", response_class=HTMLResponse)
def printable_report(entity: str, id: str, conn: Conn, caller: Caller) -> HTMLResponse:
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


@router.get("/audit/verify")
def verify(conn: Conn, caller: Caller) -> dict[str, Any]:
    """Every link and the recorded head of every organization's chain (platform admins only)."""
    if not caller.platform_admin:
        raise NotFoundError("route", "/audit/verify")
    return audit.verify_trail(conn).public()
