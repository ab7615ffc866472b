"""Organizations (tenants and partners): created by the platform's own admins."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.identity_schemas import OrganizationCreate, OrganizationOut
from coldchain.errors import NotFoundError
from storage import organizations

router = APIRouter(tags=["organizations"])


def _platform(caller: Caller) -> None:
    if not caller.platform_admin:
        # Other tenants may not even learn that tenants exist.
        raise NotFoundError("route", "/organizations")


@router.post(
    "/organizations",
    status_code=status.HTTP_201_CREATED,
    response_model=OrganizationOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def create_organization(body: OrganizationCreate, conn: Conn, caller: Caller) -> OrganizationOut:
    """A tenant or partner organization (platform admins only; 404 for everyone else)."""
    _platform(caller)
    made = organizations.create(conn, slug=body.id, name=body.name, kind=body.kind, actor=caller.name)
    return OrganizationOut.model_validate(made)


@router.get("/organizations", response_model=list[OrganizationOut], responses=responses(*AUTHED, 404))
def list_organizations(conn: Conn, caller: Caller) -> list[OrganizationOut]:
    """Every organization (platform admins only; 404 for everyone else)."""
    _platform(caller)
    return [OrganizationOut.model_validate(o) for o in organizations.list_all(conn)]
