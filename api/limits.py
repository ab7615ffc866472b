"""Refuse bad bytes before any parsing: bodies over the limit (413) and NUL in the path or query (400).

The body limit is enforced while the body arrives: a declared Content-Length over the limit is
refused without reading, a chunked body is counted as it streams and refused once it passes the
limit. The accepted body is handed on unchanged, so the application parses at most `limit` bytes.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_NUL_IN_QUERY = re.compile(rb"%00|\x00")


async def _refuse(send: Send, status: int, error: str, message: str) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: the request body limit and the NUL check, ahead of routing."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or _NUL_IN_QUERY.search(scope.get("query_string", b"")):
            await _refuse(send, 400, "BadRequest", "NUL bytes are not allowed in the path or query")
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _refuse(send, 400, "BadRequest", "Content-Length is not a whole number")
                    return
        limit = self.max_body_bytes
        if declared is not None and declared > limit:
            await _refuse(send, 413, "PayloadTooLarge", f"the request body exceeds {limit} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, "PayloadTooLarge", f"the request body exceeds {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
