"""Schemathesis hooks for the contract runs (the suite's and `schemathesis run`, via
schemathesis.toml): how to generate the string formats the OpenAPI document names beyond
JSON Schema's own. A `gtin` is a GTIN-8/12/13/14 whose last digit is its mod-10 check digit."""

from __future__ import annotations

import re
from typing import Any

import schemathesis
from hypothesis import strategies as st

from coldchain.gs1 import gtin_check_digit


@st.composite
def _gtins(draw: st.DrawFn) -> str:
    length = draw(st.sampled_from((8, 12, 13, 14)))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    return body + str(gtin_check_digit(body))


schemathesis.openapi.format("gtin", _gtins())


# Bulk imports take CSV or JSON lines: text bodies, sent as they were generated.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


@st.composite
def _glns(draw: st.DrawFn) -> str:
    body = draw(st.text("0123456789", min_size=12, max_size=12))
    return body + str(gtin_check_digit(body))


# A `gln` is a GS1 Global Location Number: 13 digits, the last its mod-10 check digit.
schemathesis.openapi.format("gln", _glns())


_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


@schemathesis.hook
def filter_path_parameters(context: Any, path_parameters: dict[str, Any]) -> bool:
    """Schemathesis unquotes a path value before quoting it, so a generated lot such as `%EF1`
    (valid: `%` is in GS1's set) would reach the API as another value (byte 0xEF, not UTF-8) and
    be refused for a value the run never generated. Such values are left out (a real client
    quotes `%` as `%25`)."""
    return not any(isinstance(v, str) and _ESCAPE.search(v) for v in (path_parameters or {}).values())
