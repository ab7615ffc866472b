"""POST /gs1/parse: any GS1 carrier's data (HRI, element string, scan data, Digital Link) read back."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller
from coldchain.gs1 import GS1Data, GS1Error, parse

router = APIRouter(tags=["gs1"])


class GS1ParseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        min_length=1,
        max_length=4096,
        description="Bracketed HRI, an element string (GS or ^ for FNC1), scan data with a symbology "
        "identifier (]d2, ]C1, ]Q3, ]e0, ...) or a GS1 Digital Link URI",
        examples=["(01)09506000134352(17)270531(10)A123", "https://id.gs1.org/01/09506000134352/10/A123"],
    )
    check_requisites: bool = Field(
        default=True, description="Check the dictionary's req= rules (ex= rules always apply)"
    )


class GS1ElementPublic(BaseModel):
    ai: str
    value: str
    title: str
    date: dt.date | None = None


class GS1ParsePublic(BaseModel):
    elements: list[GS1ElementPublic]
    hri: str
    source: str
    symbology: str | None = None
    gtin: str | None = None
    lot: str | None = None
    serial: str | None = None
    expiry: dt.date | None = None
    sscc: str | None = None
    digital_link: str | None = None


class GS1ErrorPublic(BaseModel):
    error: str
    message: str
    field: str
    ai: str | None
    rule: str


def _public(parsed: GS1Data) -> GS1ParsePublic:
    return GS1ParsePublic(
        elements=[
            GS1ElementPublic(ai=e.ai, value=e.value, title=e.title, date=e.date) for e in parsed.elements
        ],
        hri=parsed.hri,
        source=parsed.source,
        symbology=parsed.symbology,
        gtin=parsed.gtin,
        lot=parsed.lot,
        serial=parsed.serial,
        expiry=parsed.expiry,
        sscc=parsed.sscc,
        digital_link=parsed.digital_link(),
    )


@router.post(
    "/gs1/parse",
    response_model=GS1ParsePublic,
    response_model_exclude_none=True,
    responses={422: {"model": GS1ErrorPublic, "description": "invalid GS1 data: the AI and the rule broken"}},
)
def parse_gs1(body: GS1ParseRequest, caller: Caller) -> Any:
    """Validate GS1 data against the Barcode Syntax Dictionary and return its elements."""
    try:
        parsed = parse(body.data, check_requisites=body.check_requisites)
    except GS1Error as exc:
        error = GS1ErrorPublic(
            error="ValidationError", message=str(exc), field="data", ai=exc.ai, rule=exc.rule
        )
        return JSONResponse(error.model_dump(), status_code=422)
    return _public(parsed)
