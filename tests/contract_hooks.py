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
