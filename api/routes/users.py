"""People's accounts (admin): create, list, change; a person's own second factor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from api import identity
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.identity_schemas import (
    PasswordChange,
    TotpBody,
    TotpOut,
    UserCreate,
    UserOut,
    UserUpdate,
    user_out,
)
from api.schemas import MAX_SAFE_INT
from coldchain.access import Permission, PrincipalKind, parse_roles
from coldchain.errors import NotFoundError, PermissionDeniedError
from storage import auth, users

router = APIRouter(tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def create_user(body: UserCreate, conn: Conn, caller: Caller, settings: AppSettings) -> UserOut:
    """A person's account; the password policy applies (422), an e-mail is unique (409)."""
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
        roles=parse_roles([r.value for r in body.roles]),
        password=body.password,
        actor=caller.name,
        policy=identity.policy(settings),
        hashing=identity.hashing(settings),
    )
    return user_out(user)


@router.get("/users", response_model=list[UserOut], responses=responses(*AUTHED))
def list_users(conn: Conn, caller: Caller) -> list[UserOut]:
    caller.require(Permission.ADMINISTER)
    return [user_out(u) for u in users.list_users(conn, org=caller.org_id)]


@router.get("/users/{user_id}", response_model=UserOut, responses=responses(*AUTHED, 404))
def get_user(user_id: UserId, conn: Conn, caller: Caller) -> UserOut:
    """A user of the organization (admins), or oneself."""
    if caller.user_id != user_id:
        caller.require(Permission.ADMINISTER)
    return user_out(users.get_user(conn, org=caller.org_id, user_id=user_id))


@router.patch("/users/{user_id}", response_model=UserOut, responses=responses(*WITH_BODY, 404))
def update_user(
    user_id: UserId, body: UserUpdate, conn: Conn, caller: Caller, settings: AppSettings
) -> UserOut:
    """An admin changes a user. Nobody changes their own roles (segregation of duties)."""
    caller.require(Permission.ADMINISTER)
    users.get_user(conn, org=caller.org_id, user_id=user_id)  # 404 outside the organization
    if body.roles is not None and caller.user_id == user_id:
        raise PermissionDeniedError("nobody may change their own roles; another admin must")
    updated = users.update_user(
        conn,
        org=caller.org_id,
        user_id=user_id,
        actor=caller.name,
        printed_name=body.name,
        roles=parse_roles([r.value for r in body.roles]) if body.roles is not None else None,
        disabled=body.disabled,
        password=body.password,
        unlock=body.unlock,
        policy=identity.policy(settings),
        hashing=identity.hashing(settings),
    )
    return user_out(updated)


@router.post(
    "/users/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(*WITH_BODY, 429),
)
def change_my_password(body: PasswordChange, conn: Conn, caller: Caller, settings: AppSettings) -> Response:
    """One's own password: the current one, then the new one (the policy applies); other sessions end."""
    if caller.kind is not PrincipalKind.USER or caller.user_id is None:
        raise PermissionDeniedError("an API key has no password; a person signs in to change theirs")
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


@router.post("/users/me/totp", response_model=TotpOut, responses=responses(*WITH_BODY, 429))
def set_my_totp(body: TotpBody, conn: Conn, caller: Caller, settings: AppSettings) -> TotpOut:
    """Turn one's own TOTP second factor on (the secret is shown once) or off; needs the password."""
    import pyotp

    if caller.kind is not PrincipalKind.USER or caller.user_id is None:
        raise PermissionDeniedError("an API key has no second factor; a person signs in to set theirs")
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
        return TotpOut(totp=False)
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name="coldchain")
    return TotpOut(totp=True, secret=secret, provisioning_uri=uri)
