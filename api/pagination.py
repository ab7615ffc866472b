"""Cursor pagination of lists: `limit` rows at a time, in key order, after an opaque cursor.

The cursor carries the last key of the page and the list it belongs to, base64url-encoded; it is
a position, not a snapshot, so a walk never repeats or skips a row that exists throughout it,
whatever is inserted meanwhile. Lists answer a bare JSON array as they always have; the next
page is named in `Link: <...>; rel="next"` (RFC 8288) and in `X-Next-Cursor`, absent on the last.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import Query, Request, Response

from coldchain.errors import ValidationError

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

Cursor = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=400,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="where the previous page ended: its `X-Next-Cursor` (or the `Link` rel=next)",
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
OptionalLimit = Annotated[
    int | None, Query(ge=1, le=MAX_LIMIT, description="rows per page (default: every row, one answer)")
]

PAGE_HEADERS = {
    "Link": {
        "description": 'the next page: `<URL>; rel="next"` (absent on the last page)',
        "schema": {"type": "string"},
    },
    "X-Next-Cursor": {
        "description": "the `cursor` of the next page (absent on the last page)",
        "schema": {"type": "string"},
    },
}


def encode(listing: str, key: Any) -> str:
    raw = orjson.dumps({"l": listing, "k": key})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(listing: str, cursor: str | None) -> Any:
    """The key a cursor of this list carries (None without a cursor); a bad one is 422."""
    if cursor is None:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        value = None
    if not isinstance(value, dict) or value.get("l") != listing or not isinstance(value.get("k"), str):
        raise ValidationError(f"cursor is not one this list ({listing}) gave", field="cursor")
    return value["k"]


def next_page(
    request: Request, response: Response, listing: str, rows: list[Any], limit: int | None, key: Any
) -> list[Any]:
    """The page to answer (the first `limit` of `rows`, which holds one more when there is a next
    page), with the Link and X-Next-Cursor headers naming that next page."""
    if limit is None or len(rows) <= limit:
        return rows
    page = rows[:limit]
    cursor = encode(listing, key(page[-1]))
    response.headers["X-Next-Cursor"] = cursor
    url = request.url.include_query_params(cursor=cursor, limit=limit)
    response.headers["Link"] = f'<{url}>; rel="next"'
    return page


def with_pages(extra: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    return {200: {"headers": PAGE_HEADERS}, **extra}
