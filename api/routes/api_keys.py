"""Machines' API keys (admin): create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.identity_schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, api_key_out
from api.schemas import MAX_SAFE_INT
from coldchain.access import Permission
from coldchain.errors import ConflictError
from storage import api_keys

router = APIRouter(tags=["api-keys"])


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=responses(*WITH_BODY, 409),
)
def create_key(body: ApiKeyCreate, conn: Conn, caller: Caller) -> ApiKeyCreated:
    """A key for a machine with one role; the key is in this answer only."""
    caller.require(Permission.ADMINISTER)
    row, key = api_keys.create_key(
        conn,
        org=caller.org_id,
        name=body.name,
        role=body.role,
        expires_in_days=body.expires_in_days,
        actor=caller.name,
    )
    return ApiKeyCreated(**api_key_out(row).model_dump(), key=key)


@router.get("/api-keys", response_model=list[ApiKeyOut], responses=responses(*AUTHED))
def list_keys(
    conn: Conn, caller: Caller, include_revoked: Annotated[bool, Query()] = False
) -> list[ApiKeyOut]:
    caller.require(Permission.ADMINISTER)
    found = api_keys.list_keys(conn, org=caller.org_id, include_revoked=include_revoked)
    return [api_key_out(k) for k in found]


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(*AUTHED, 404, 409),
)
def revoke_key(key_id: Annotated[int, Path(ge=1, le=MAX_SAFE_INT)], conn: Conn, caller: Caller) -> Response:
    """Revoke a key at once. Not the key making this call (409): another admin, a person signed
    in, or `coldchain token revoke` does that, so a slip cannot lock the last admin key out."""
    caller.require(Permission.ADMINISTER)
    if caller.key_id == key_id:
        raise ConflictError("this request is made with that key; revoke it with another credential")
    api_keys.revoke_key(conn, org=caller.org_id, key_id=key_id, actor=caller.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
