"""Signing in: the OAuth2 password flow, rotating refresh tokens, signing out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Response, status

from api import identity
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, PUBLIC, responses
from api.identity_schemas import CallerOut, RefreshBody, TokenOut
from api.schemas import LINE_PATTERN as _LINE
from coldchain import access_tokens
from coldchain.settings import Settings
from storage import users

router = APIRouter(tags=["auth"])
_PUBLIC_BODY = (*PUBLIC, 401, 413)


def _tokens(conn: Conn, settings: Settings, user: users.UserRow, refresh: str | None = None) -> TokenOut:
    token, _ = access_tokens.issue(
        identity.token_key(settings), user_id=user.id, org_id=user.org_id, ttl_s=settings.access_token_ttl_s
    )
    if refresh is None:
        refresh = users.issue_refresh(conn, user_id=user.id, ttl_s=settings.refresh_token_ttl_s)
    return TokenOut(access_token=token, expires_in=settings.access_token_ttl_s, refresh_token=refresh)


@router.post("/auth/token", response_model=TokenOut, responses=responses(*_PUBLIC_BODY, 429))
def login(
    conn: Conn,
    settings: AppSettings,
    username: Annotated[str, Form(min_length=1, max_length=254, pattern=_LINE, description="the e-mail")],
    password: Annotated[str, Form(min_length=1, max_length=256)],
    grant_type: Annotated[str, Form(pattern="^(password)?$", description="OAuth2: `password`")] = "",
    scope: Annotated[str, Form(max_length=1000, pattern=_LINE, description="OAuth2: ignored")] = "",
    totp: Annotated[
        str, Form(pattern="^([0-9]{6})?$", description="one-time code, for users with a second factor")
    ] = "",
) -> TokenOut:
    """`username` is the e-mail. Five failures within 15 minutes lock the account for 15 minutes."""
    user = users.check_password(
        conn,
        email=username,
        password=password,
        hashing=identity.hashing(settings),
        lockout=identity.lockout(settings),
        totp_code=totp or None,
    )
    return _tokens(conn, settings, user)


@router.post("/auth/refresh", response_model=TokenOut, responses=responses(*_PUBLIC_BODY))
def refresh(body: RefreshBody, conn: Conn, settings: AppSettings) -> TokenOut:
    """A new access token and the next refresh token; the one given is retired."""
    user, successor = users.rotate_refresh(conn, token=body.refresh_token, ttl_s=settings.refresh_token_ttl_s)
    return _tokens(conn, settings, user, refresh=successor)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(*PUBLIC, 413),
)
def logout(body: RefreshBody, conn: Conn) -> Response:
    """Revoke this refresh token's whole chain; access tokens lapse within their 15 minutes."""
    users.revoke_refresh(conn, token=body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/auth/me", response_model=CallerOut, responses=responses(*AUTHED))
def me(caller: Caller) -> CallerOut:
    """Who this token belongs to: a person or an API key, the organization and the roles."""
    return CallerOut(
        name=caller.name,
        printed_name=caller.printed_name,
        kind=caller.kind.value,
        organization=caller.organization,
        roles=sorted(caller.roles),
        user_id=caller.user_id,
    )
