"""GS1 identifiers: GTIN check digits, lot numbers and Digital Link URIs (GS1 General Specifications)."""

from __future__ import annotations

import re
from urllib.parse import quote

from coldchain.errors import ValidationError

_GTIN_LENGTHS = (8, 12, 13, 14)
# AI (10) batch/lot: up to 20 characters of GS1 AI encodable character set 82.
_LOT_RE = re.compile(r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}$")


def gtin_check_digit(body: str) -> int:
    """Mod-10 check digit over the digits before it, weights 3,1,3,... from the right."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def normalize_gtin(value: str) -> str:
    """Validate a GTIN-8/12/13/14 and return it as 14 digits (the form GS1 AI 01 carries)."""
    digits = value.strip()
    if not digits.isdigit() or len(digits) not in _GTIN_LENGTHS:
        raise ValidationError(f"GTIN {value!r} must be 8, 12, 13 or 14 digits", field="gtin")
    if gtin_check_digit(digits[:-1]) != int(digits[-1]):
        raise ValidationError(f"GTIN {value!r} has a wrong check digit", field="gtin")
    return digits.zfill(14)


def validate_lot(value: str) -> str:
    """A batch/lot number as GS1 AI (10) allows it: 1 to 20 characters of set 82."""
    if not _LOT_RE.match(value):
        raise ValidationError(
            f"lot {value!r} must be 1-20 characters of the GS1 AI (10) character set", field="lot"
        )
    return value


def digital_link(gtin: str, lot: str | None = None, serial: str | None = None) -> str:
    """The GS1 Digital Link URI of a trade item, its lot and serial when given."""
    uri = f"https://id.gs1.org/01/{normalize_gtin(gtin)}"
    if lot is not None:
        uri += f"/10/{quote(lot, safe='')}"
    if serial is not None:
        uri += f"/21/{quote(serial, safe='')}"
    return uri
