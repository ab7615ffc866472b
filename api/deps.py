"""Request dependencies as Annotated aliases: the database connection and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool

from api.identity import authenticate_user
from coldchain.access import Principal
from coldchain.access_tokens import looks_like_jwt
from coldchain.errors import AuthError
from coldchain.settings import Settings
from storage import auth

_bearer = HTTPBearer(auto_error=False, description="An API key or a user's token")


def _pool(request: Request) -> ConnectionPool:
    pool: ConnectionPool = request.state.pool
    return pool


def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def _connection(pool: Annotated[ConnectionPool, Depends(_pool)]) -> Iterator[psycopg.Connection]:
    """One pooled connection per request, in autocommit; writes open their own transaction."""
    with pool.connection() as conn:
        conn.autocommit = True
        yield conn


Conn = Annotated[psycopg.Connection, Depends(_connection)]
AppSettings = Annotated[Settings, Depends(_settings)]


def _principal(
    conn: Conn,
    settings: AppSettings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("an Authorization: Bearer <token> header is required")
    if looks_like_jwt(credentials.credentials):  # a person's access token; API keys start "cc_"
        return authenticate_user(conn, settings, credentials.credentials)
    return auth.authenticate(conn, credentials.credentials)


Caller = Annotated[Principal, Depends(_principal)]
