"""EPC identifiers as EPCIS 2.0 carries them: pure-identity URNs or GS1 Digital Link URIs.

EPCIS 2.0 allows both forms for the same object (`urn:epc:id:sscc:0614141.1234567890` and
`https://id.gs1.org/00/106141412345678908`), so a capture must read both and arrive at the same
GS1 keys. URNs follow GS1's EPC Tag Data Standard: the company prefix and the reference are
split by a dot, the indicator or extension digit leads the reference, and the check digit is
not written (it is computed here). Digital Links are read by `coldchain.gs1.parse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from coldchain.gs1 import GS1Error, gtin_check_digit, parse

__all__ = ["EPC", "EPCKind", "parse_epc"]

EPCKind = Literal["sscc", "sgtin", "lgtin", "gtin", "sgln", "giai", "other"]


@dataclass(frozen=True, slots=True)
class EPC:
    """The GS1 keys of one identifier; `other` when it is neither an EPC URN nor a Digital Link."""

    kind: EPCKind
    uri: str
    sscc: str | None = None
    gtin: str | None = None
    lot: str | None = None
    serial: str | None = None
    gln: str | None = None
    giai: str | None = None


_URN = re.compile(r"^urn:epc:(id|class):([a-z]+):(.+)$")
_DIGITS = re.compile(r"^[0-9]+$")
# Characters GS1 allows in serials, lots and asset references (set 82), as the URN escapes them.
_SET82 = re.compile(r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,30}$")


def _digits(part: str, what: str, uri: str) -> str:
    if not _DIGITS.match(part):
        raise GS1Error(f"{uri}: the {what} must be digits", ai=None, rule="epc-urn")
    return part


def _with_check(body: str) -> str:
    return body + str(gtin_check_digit(body))


def _gtin(prefix: str, item: str, uri: str) -> str:
    _digits(prefix, "company prefix", uri)
    _digits(item, "indicator and item reference", uri)
    if len(prefix) + len(item) != 13 or not 6 <= len(prefix) <= 12:
        raise GS1Error(
            f"{uri}: company prefix and item reference must make 13 digits", ai=None, rule="epc-urn"
        )
    return _with_check(item[0] + prefix + item[1:])


def _text(part: str, what: str, uri: str) -> str:
    value = unquote(part)
    if not _SET82.match(value):
        raise GS1Error(f"{uri}: the {what} is not GS1 set 82 text", ai=None, rule="epc-urn")
    return value


def _from_urn(uri: str, scheme: str, kind: str, body: str) -> EPC:
    parts = body.split(".")
    if scheme == "id" and kind == "sscc" and len(parts) == 2:
        prefix, ref = (_digits(p, "SSCC part", uri) for p in parts)
        if len(prefix) + len(ref) != 17:
            raise GS1Error(f"{uri}: an SSCC has 17 digits before its check digit", ai=None, rule="epc-urn")
        return EPC("sscc", uri, sscc=_with_check(ref[0] + prefix + ref[1:]))
    if scheme == "id" and kind == "sgtin" and len(parts) == 3:
        return EPC("sgtin", uri, gtin=_gtin(parts[0], parts[1], uri), serial=_text(parts[2], "serial", uri))
    if scheme == "class" and kind == "lgtin" and len(parts) == 3:
        lot = _text(parts[2], "lot", uri)
        if len(lot) > 20:
            raise GS1Error(f"{uri}: a lot has at most 20 characters", ai=None, rule="epc-urn")
        return EPC("lgtin", uri, gtin=_gtin(parts[0], parts[1], uri), lot=lot)
    if scheme == "id" and kind == "sgln" and len(parts) == 3:
        prefix, ref = _digits(parts[0], "company prefix", uri), parts[1]
        if (ref and not _DIGITS.match(ref)) or len(prefix) + len(ref) != 12:
            raise GS1Error(
                f"{uri}: company prefix and location reference must make 12 digits", ai=None, rule="epc-urn"
            )
        return EPC("sgln", uri, gln=_with_check(prefix + ref))
    if scheme == "id" and kind == "giai" and len(parts) == 2:
        prefix = _digits(parts[0], "company prefix", uri)
        return EPC("giai", uri, giai=prefix + _text(parts[1], "asset reference", uri))
    return EPC("other", uri)


def parse_epc(uri: str) -> EPC:
    """The GS1 keys in an EPC URN or a Digital Link; GS1Error when it claims to be one and is wrong.

    Any other URI (a URN of one's own, a web address that is no Digital Link) is `other`.
    """
    m = _URN.match(uri)
    if m is not None:
        return _from_urn(uri, m.group(1), m.group(2), m.group(3))
    if not uri.startswith(("http://", "https://")):
        return EPC("other", uri)
    try:
        data = parse(uri, check_requisites=False)
    except GS1Error:
        return EPC("other", uri)
    if data.sscc is not None:
        return EPC("sscc", uri, sscc=data.sscc)
    if data.gtin is not None:
        kind: EPCKind = "sgtin" if data.serial else "lgtin" if data.lot else "gtin"
        return EPC(kind, uri, gtin=data.gtin, lot=data.lot, serial=data.serial)
    if (gln := data.value("414")) is not None:
        return EPC("sgln", uri, gln=gln)
    if (giai := data.value("8004")) is not None:
        return EPC("giai", uri, giai=giai)
    return EPC("other", uri)
