"""Optimistic concurrency over HTTP (RFC 9110 §13.1.1, RFC 6585 §3): every master-data record
answers with a strong `ETag` naming its row version, and an edit must send it back in `If-Match`.
Without one the edit is refused with 428 (it could overwrite a change it never saw); with a
version that is no longer current, 412. `If-Match: *` accepts whatever version exists.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Header, Response

from coldchain.errors import PreconditionRequiredError, ValidationError
from coldchain.master_data import Versions

_TAG = re.compile(r'\s*(W/)?"v([0-9]{1,18})"\s*(?:,|$)')
_ANY_TAG = re.compile(r'\s*(W/)?"[\x21\x23-\x7e]*"\s*(?:,|$)')

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1024,
        pattern=r"^[\x20-\x7e]*$",
        description="the `ETag` of the version the edit was made against (or `*`); required: 428"
        " without it, 412 when the record has changed since",
        examples=['"v3"'],
    ),
]

ETAG_HEADER = {
    "ETag": {
        "description": 'the record\'s version as a strong entity tag (`"v3"`); send it back in `If-Match`',
        "schema": {"type": "string"},
    }
}


def etag(version: int) -> str:
    return f'"v{version}"'


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag(version)


def accepted_versions(if_match: str | None) -> Versions:
    """The versions an `If-Match` accepts: None for `*`; a weak tag never matches (strong
    comparison), nor does a tag this server did not issue. Missing: 428."""
    if if_match is None or not if_match.strip():
        raise PreconditionRequiredError(
            "this edit needs an If-Match header with the ETag of the version it was made against"
        )
    if if_match.strip() == "*":
        return None
    versions: set[int] = set()
    rest = if_match
    while rest.strip():
        match = _TAG.match(rest)
        if match is not None:
            if match.group(1) is None:
                versions.add(int(match.group(2)))
        else:
            other = _ANY_TAG.match(rest)
            if other is None:
                raise ValidationError("If-Match must be `*` or a list of entity tags", field="If-Match")
            match = other
        rest = rest[match.end() :]
    return frozenset(versions)


def with_etag(status: int, extra: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses`, with the ETag header documented on its success status."""
    return {status: {"headers": ETAG_HEADER}, **extra}
