"""Organizations (tenants and partners): created by the platform's own admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller, Conn
from coldchain.errors import NotFoundError
from storage import organizations

router = APIRouter(tags=["organizations"])


class OrganizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", examples=["hosp-b"])
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(
        default="manufacturer", pattern="^(manufacturer|3pl|carrier|customer|hospital|partner)$"
    )


def _platform(caller: Caller) -> None:
    if not caller.platform_admin:
        # Other tenants may not even learn that tenants exist.
        raise NotFoundError("route", "/organizations")


@router.post("/organizations", status_code=status.HTTP_201_CREATED)
def create_organization(body: OrganizationCreate, conn: Conn, caller: Caller) -> dict[str, Any]:
    _platform(caller)
    return organizations.create(conn, slug=body.id, name=body.name, kind=body.kind, actor=caller.name)


@router.get("/organizations")
def list_organizations(conn: Conn, caller: Caller) -> list[dict[str, Any]]:
    _platform(caller)
    return organizations.list_all(conn)
