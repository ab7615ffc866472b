"""Request dependencies as Annotated aliases: the database connection and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool

from api.identity import authenticate_user
from coldchain.access import Principal
from coldchain.access_tokens import looks_like_jwt
from coldchain.errors import AuthError, ValidationError
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


_known_query: dict[int, frozenset[str]] = {}


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is refused (422), as unknown body keys are:
    a misspelt filter (`?stat=open`) must not silently widen the answer."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not getattr(route, "include_in_schema", True):
        return  # provider webhooks (Twilio) carry query parameters of their own
    known = _known_query.get(id(route))
    if known is None:
        known = frozenset(_query_names(dependant))
        _known_query[id(route)] = known
    for name in request.query_params:
        if name not in known:
            raise ValidationError(f"unknown query parameter {name!r}", field=name)
