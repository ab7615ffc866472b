"""Signing in: the OAuth2 password flow, rotating refresh tokens, signing out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Response, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field

from api import identity
from api.deps import AppSettings, Caller, Conn
from coldchain import access_tokens
from coldchain.settings import Settings
from storage import users

router = APIRouter(tags=["auth"])


class TokenPublic(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=200)


def _tokens(conn: Conn, settings: Settings, user: users.UserRow, refresh: str | None = None) -> TokenPublic:
    token, _ = access_tokens.issue(
        identity.token_key(settings), user_id=user.id, org_id=user.org_id, ttl_s=settings.access_token_ttl_s
    )
    if refresh is None:
        refresh = users.issue_refresh(conn, user_id=user.id, ttl_s=settings.refresh_token_ttl_s)
    return TokenPublic(access_token=token, expires_in=settings.access_token_ttl_s, refresh_token=refresh)


@router.post("/auth/token", response_model=TokenPublic)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    conn: Conn,
    settings: AppSettings,
    totp: Annotated[str | None, Form(description="one-time code, for users with a second factor")] = None,
) -> TokenPublic:
    """`username` is the e-mail. Five failures within 15 minutes lock the account for 15 minutes."""
    user = users.check_password(
        conn,
        email=form.username,
        password=form.password,
        hashing=identity.hashing(settings),
        lockout=identity.lockout(settings),
        totp_code=totp,
    )
    return _tokens(conn, settings, user)


@router.post("/auth/refresh", response_model=TokenPublic)
def refresh(body: RefreshBody, conn: Conn, settings: AppSettings) -> TokenPublic:
    """A new access token and the next refresh token; the one given is retired."""
    user, successor = users.rotate_refresh(conn, token=body.refresh_token, ttl_s=settings.refresh_token_ttl_s)
    return _tokens(conn, settings, user, refresh=successor)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(body: RefreshBody, conn: Conn) -> Response:
    """Revoke this refresh token's whole chain; access tokens lapse within their 15 minutes."""
    users.revoke_refresh(conn, token=body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/auth/me")
def me(caller: Caller) -> dict[str, Any]:
    return {
        "name": caller.name,
        "printed_name": caller.printed_name,
        "kind": caller.kind.value,
        "organization": caller.organization,
        "roles": sorted(r.value for r in caller.roles),
        "user_id": caller.user_id,
    }
