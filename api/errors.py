"""One place maps every failure to a precise HTTP error with one JSON shape.

The shape is `{"error", "message", "field"?}` (`api.schemas.ErrorBody`) for the domain's
exceptions, request validation, HTTP errors raised by the framework (unknown path, method not
allowed, unparsable body) and values the database refuses; `responses()` documents it per route.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.schemas import ErrorBody
from coldchain.errors import (
    AuthError,
    BrokerUnavailableError,
    ColdchainError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    PreconditionRequiredError,
    ValidationError,
)

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[ColdchainError], int]] = [
    (PermissionDeniedError, 403),
    (AuthError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PreconditionFailedError, 412),
    (PreconditionRequiredError, 428),
    (ValidationError, 422),
    (BrokerUnavailableError, 503),
]

_DESCRIPTIONS = {
    400: "Malformed request: bytes that are not UTF-8 or not JSON, a bad Content-Length",
    401: "No token, or an unknown, expired or revoked one",
    403: "The caller's role does not allow this",
    404: "Not found, or belongs to another organization",
    409: "Conflicts with the current state (duplicate, lifecycle order, overlapping assignment)",
    412: "`If-Match` names a version that is no longer current: the record changed since it was read",
    413: "The request body is larger than the server accepts",
    422: "The request breaks a rule; `field` names the culprit",
    428: "An edit without `If-Match`: send the ETag of the version it was made against",
    429: "Too many requests",
    503: "A server the request needs (the MQTT broker) cannot be reached; nothing was changed",
}

_NAMES = {
    400: "BadRequest",
    401: "AuthError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "ConflictError",
    412: "PreconditionFailedError",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    428: "PreconditionRequiredError",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry documenting these error statuses with the error schema."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


# What every route can answer: the authenticated ones add 401/403, those with a body 413.
PUBLIC = (400, 422)
AUTHED = (400, 401, 403, 422)
WITH_BODY = (400, 401, 403, 413, 422)
# An edit under optimistic concurrency (If-Match): also 404, 412 (stale) and 428 (no If-Match).
EDIT = (*WITH_BODY, 404, 412, 428)


def error_response(
    status: int, message: str, *, error: str | None = None, field: str | None = None,
    headers: dict[str, str] | None = None, details: Iterable[dict[str, str]] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error=error or _NAMES.get(status, "HTTPError"),
        message=message,
        field=field or None,
        details=list(details) if details is not None else None,  # type: ignore[arg-type]
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _field(loc: Iterable[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _methods_for(request: Request) -> list[str]:
    """Every method some route answers on this path (routes may sit in included routers)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(ColdchainError)
    async def _domain_error(request: Request, exc: ColdchainError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(
            status, str(exc), error=type(exc).__name__, field=getattr(exc, "field", None), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": _field(err.get("loc", ())), "message": str(err.get("msg", "invalid"))}
            for err in exc.errors()
        ]
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return error_response(400, "the request body is not valid JSON", field="body")
        first = details[0] if details else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return error_response(422, message, error="ValidationError", field=first["field"], details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route on the path; the answer lists every method it has.
            headers["Allow"] = ", ".join(_methods_for(request))
            message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        return error_response(exc.status_code, message, headers=headers or None)

    @app.exception_handler(psycopg.DataError)
    async def _data_error(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # A value the schema let through but PostgreSQL cannot hold: the caller's input, not a fault.
        log.warning("the database refused a request value: %s", exc.diag.message_primary or exc)
        return error_response(422, f"a value cannot be stored: {exc.diag.message_primary or 'out of range'}")
