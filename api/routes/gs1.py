"""POST /gs1/parse: any GS1 carrier's data (HRI, element string, scan data, Digital Link) read back."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field, StrictBool

from api.deps import Caller
from api.errors import WITH_BODY, responses
from api.schemas import ErrorBody, _In, _Out
from coldchain.access import Permission
from coldchain.gs1 import GS1Data, GS1Error, parse

router = APIRouter(tags=["gs1"])


class GS1ParseRequest(_In):
    data: Annotated[
        str,
        Field(
            min_length=1,
            max_length=4096,
            description="Bracketed HRI, an element string (GS or ^ for FNC1), scan data with a symbology "
            "identifier (]d2, ]C1, ]Q3, ]e0, ...) or a GS1 Digital Link URI",
            examples=["(01)09506000134352(17)270531(10)A123", "https://id.gs1.org/01/09506000134352/10/A123"],
        ),
    ]
    check_requisites: StrictBool = Field(
        default=True, description="Check the dictionary's req= rules (ex= rules always apply)"
    )


class GS1ElementOut(_Out):
    ai: str
    value: str
    title: str
    date: dt.date | None = None


class GS1ParseOut(_Out):
    elements: list[GS1ElementOut]
    hri: str
    source: str
    symbology: str | None = None
    gtin: str | None = None
    lot: str | None = None
    serial: str | None = None
    expiry: dt.date | None = None
    sscc: str | None = None
    digital_link: str | None = None


def _out(parsed: GS1Data) -> GS1ParseOut:
    return GS1ParseOut(
        elements=[GS1ElementOut(ai=e.ai, value=e.value, title=e.title, date=e.date) for e in parsed.elements],
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


_RESPONSES = responses(*WITH_BODY)
_RESPONSES[422] = {
    **_RESPONSES[422],
    "description": "The request breaks a rule, or the data is not valid GS1: then `field` is `data` and the"
    " error body also carries `ai` (the Application Identifier at fault, or null) and `rule` (the"
    " Syntax Dictionary rule broken: csum, length, cset, req, ex, ...)",
}


@router.post(
    "/gs1/parse", response_model=GS1ParseOut, response_model_exclude_none=True, responses=_RESPONSES
)
def parse_gs1(body: GS1ParseRequest, caller: Caller) -> Any:
    """Validate GS1 data against the Barcode Syntax Dictionary and return its elements. Invalid
    GS1 data is a 422 in the one error shape with two more fields, `ai` and `rule`."""
    caller.require(Permission.READ)
    try:
        parsed = parse(body.data, check_requisites=body.check_requisites)
    except GS1Error as exc:
        return gs1_error(exc, field="data")
    return _out(parsed)


def gs1_error(exc: GS1Error, *, field: str) -> JSONResponse:
    """422 in the one error shape, with the AI at fault and the Syntax Dictionary rule broken."""
    body = ErrorBody(error="ValidationError", message=str(exc), field=field).model_dump(exclude_none=True)
    return JSONResponse({**body, "ai": exc.ai, "rule": exc.rule}, status_code=422)
