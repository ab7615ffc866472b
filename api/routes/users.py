"""People's accounts (admin): create, list, change; a person's own second factor."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api import identity
from api.deps import AppSettings, Caller, Conn
from coldchain.access import Permission, PrincipalKind, parse_roles
from coldchain.errors import NotFoundError, PermissionDeniedError, ValidationError
from storage import auth, users

router = APIRouter(tags=["users"])


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=254, examples=["qa.lead@example.com"])
    name: str = Field(min_length=1, max_length=200, description="printed name, shown on every signature")
    roles: list[str] = Field(min_length=1, examples=[["qa"]])
    password: str = Field(min_length=1, max_length=256)
    organization: str | None = Field(default=None, description="platform admins only; default: yours")


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    roles: list[str] | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=1, max_length=256)
    unlock: bool = False


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


class TotpBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=1, max_length=256)
    enable: bool = True


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, conn: Conn, caller: Caller, settings: AppSettings) -> dict[str, Any]:
    caller.require(Permission.ADMINISTER)
    org = caller.org_id
    if body.organization is not None and body.organization != caller.organization:
        if not caller.platform_admin:
            raise NotFoundError("organization", body.organization)
        org = auth.org_id(conn, body.organization)
    user = users.create_user(
        conn,
        org=org,
        email=body.email,
        printed_name=body.name,
        roles=parse_roles(body.roles),
        password=body.password,
        actor=caller.name,
        policy=identity.policy(settings),
        hashing=identity.hashing(settings),
    )
    return user.public()


@router.get("/users")
def list_users(conn: Conn, caller: Caller) -> list[dict[str, Any]]:
    caller.require(Permission.ADMINISTER)
    return [u.public() for u in users.list_users(conn, org=caller.org_id)]


@router.get("/users/{user_id}")
def get_user(user_id: int, conn: Conn, caller: Caller) -> dict[str, Any]:
    if caller.user_id != user_id:
        caller.require(Permission.ADMINISTER)
    return users.get_user(conn, org=caller.org_id, user_id=user_id).public()


@router.patch("/users/{user_id}")
def update_user(
    user_id: int, body: UserUpdate, conn: Conn, caller: Caller, settings: AppSettings
) -> dict[str, Any]:
    """An admin changes a user. Nobody changes their own roles (segregation of duties)."""
    caller.require(Permission.ADMINISTER)
    users.get_user(conn, org=caller.org_id, user_id=user_id)  # 404 outside the organization
    if body.roles is not None and caller.user_id == user_id:
        raise PermissionDeniedError("nobody may change their own roles; another admin must")
    return users.update_user(
        conn,
        org=caller.org_id,
        user_id=user_id,
        actor=caller.name,
        printed_name=body.name,
        roles=parse_roles(body.roles) if body.roles is not None else None,
        disabled=body.disabled,
        password=body.password,
        unlock=body.unlock,
        policy=identity.policy(settings),
        hashing=identity.hashing(settings),
    ).public()


@router.post("/users/me/password", status_code=status.HTTP_204_NO_CONTENT)
def change_my_password(body: PasswordChange, conn: Conn, caller: Caller, settings: AppSettings) -> Response:
    """One's own password: the current one, then the new one (the policy applies); other sessions end."""
    if caller.kind is not PrincipalKind.USER or caller.user_id is None:
        raise ValidationError("API keys have no password", field="current_password")
    users.change_own_password(
        conn,
        user_id=caller.user_id,
        current=body.current_password,
        new=body.new_password,
        hashing=identity.hashing(settings),
        lockout=identity.lockout(settings),
        policy=identity.policy(settings),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users/me/totp")
def set_my_totp(body: TotpBody, conn: Conn, caller: Caller, settings: AppSettings) -> dict[str, Any]:
    """Turn one's own TOTP second factor on (the secret is shown once) or off; needs the password."""
    import pyotp

    if caller.kind is not PrincipalKind.USER or caller.user_id is None:
        raise ValidationError("API keys have no second factor", field="password")
    user = users.check_password(
        conn,
        user_id=caller.user_id,
        password=body.password,
        hashing=identity.hashing(settings),
        lockout=identity.lockout(settings),
        purpose="reauthenticate",
    )
    secret = pyotp.random_base32() if body.enable else None
    users.set_totp(conn, org=caller.org_id, user_id=user.id, secret=secret, actor=caller.name)
    if secret is None:
        return {"totp": False}
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name="coldchain")
    return {"totp": True, "secret": secret, "provisioning_uri": uri}
