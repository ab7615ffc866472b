"""One place maps the domain's exceptions to precise HTTP errors with a message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from coldchain.errors import (
    AuthError,
    ColdchainError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[ColdchainError], int]] = [
    (PermissionDeniedError, 403),
    (AuthError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ValidationError, 422),
]


def install(app: FastAPI) -> None:
    @app.exception_handler(ColdchainError)
    async def _domain_error(request: Request, exc: ColdchainError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        body: dict[str, object] = {"error": type(exc).__name__, "message": str(exc)}
        field = getattr(exc, "field", None)
        if field:
            body["field"] = field
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in err.get("loc", ())[1:]), "message": err.get("msg")}
            for err in exc.errors()
        ]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        return JSONResponse(
            {
                "error": "ValidationError",
                "message": f"{first['field']}: {first['message']}",
                "details": details,
            },
            status_code=422,
        )
