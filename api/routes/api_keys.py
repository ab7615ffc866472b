"""Machines' API keys (admin): create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller, Conn
from coldchain.access import Permission, Role
from storage import api_keys

router = APIRouter(tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, examples=["erp-sync"])
    role: Role
    expires_in_days: int = Field(default=365, ge=1, le=3650)


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyCreate, conn: Conn, caller: Caller) -> dict[str, Any]:
    caller.require(Permission.ADMINISTER)
    row, key = api_keys.create_key(
        conn,
        org=caller.org_id,
        name=body.name,
        role=body.role,
        expires_in_days=body.expires_in_days,
        actor=caller.name,
    )
    return {**row.public(), "key": key}


@router.get("/api-keys")
def list_keys(conn: Conn, caller: Caller, include_revoked: bool = False) -> list[dict[str, Any]]:
    caller.require(Permission.ADMINISTER)
    return [k.public() for k in api_keys.list_keys(conn, org=caller.org_id, include_revoked=include_revoked)]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(key_id: int, conn: Conn, caller: Caller) -> Response:
    caller.require(Permission.ADMINISTER)
    api_keys.revoke_key(conn, org=caller.org_id, key_id=key_id, actor=caller.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
