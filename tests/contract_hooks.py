"""Schemathesis hooks for the contract runs (the suite's and `schemathesis run`, via
schemathesis.toml): how to generate the string formats the OpenAPI document names beyond
JSON Schema's own. A `gtin` is a GTIN-8/12/13/14 whose last digit is its mod-10 check digit."""

from __future__ import annotations

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
