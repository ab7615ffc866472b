"""GS1 identifiers: check digits, Digital Link URIs, and parsing of every GS1 data carrier form.

Parsing is driven by GS1's Barcode Syntax Dictionary (`coldchain/standards/`), read once on first
use: each AI's components (N numeric, X set 82, Y set 39, Z set 64; fixed or variable length;
optional tails), its linters (`csum`, `yymmd0`, ...), whether a separator must follow it, its
association rules (`req=` must appear with one of, `ex=` must not appear with) and its Digital Link
role (`dlpkey=` primary key with ordered qualifiers, `?` allowed as a query attribute).

`parse(data)` takes any of:

- bracketed HRI: `(01)09506000134352(17)270531(10)A123`; a literal `(` in a value is `\\(`;
- an element string: AIs run together, variable-length values ended by GS (0x1D) or `^` (FNC1);
- scan data: a symbology identifier first (`]d2`, `]C1`, `]Q3`, `]e0`, `]J1`: element string;
  `]E0`/`]E4`: EAN-13/EAN-8, optionally `|]e0` and a composite; `]d1`, `]Q1`, `]J0`: plain data,
  accepted when it is a Digital Link URI);
- a GS1 Digital Link URI: the rightmost primary key in the path, its qualifiers in the order the
  dictionary gives, further AIs as query parameters, percent-decoded.

It behaves as GS1's syntax engine does by default: unknown AIs refused, zero-suppressed GTINs in
a Digital Link refused (a GTIN there has 14 digits), duplicate AIs with different values refused,
`req=` checked unless `check_requisites=False` (the only rule a caller may switch off). Linters
needing external tables (`iso3166*`, `iso4217`, `iban`, `mediatype`, `packagetype`, coupon
linters) are not applied; `gcppos1`/`gcppos2` check only what needs no prefix table (four digits).
Every refusal is a `GS1Error` naming the AI and the rule broken.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Literal, NamedTuple
from urllib.parse import quote, unquote, unquote_plus

from coldchain.errors import ValidationError

__all__ = [
    "AIDefinition",
    "Element",
    "GS1Data",
    "GS1Error",
    "SyntaxDictionary",
    "digital_link",
    "gtin_check_digit",
    "identify_lot",
    "identify_product",
    "load_dictionary",
    "normalize_gtin",
    "parse",
    "syntax_dictionary",
    "validate_lot",
]

_GTIN_LENGTHS = (8, 12, 13, 14)
# AI (10) batch/lot: up to 20 characters of GS1 AI encodable character set 82.
_LOT_RE = re.compile(r"^[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]{1,20}$")

CANONICAL_STEM = "https://id.gs1.org"


def gtin_check_digit(body: str) -> int:
    """Mod-10 check digit over the digits before it, weights 3,1,3,... from the right."""
    # Sums of the ASCII codes rather than a per-digit loop: parsing checks one per GTIN, GLN, SSCC.
    odd, even = body[::-2].encode(), body[-2::-2].encode()
    total = 3 * (sum(odd) - 48 * len(odd)) + sum(even) - 48 * len(even)
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
    uri = f"{CANONICAL_STEM}/01/{normalize_gtin(gtin)}"
    if lot is not None:
        uri += f"/10/{quote(lot, safe='')}"
    if serial is not None:
        uri += f"/21/{quote(serial, safe='')}"
    return uri


class GS1Error(ValidationError):
    """GS1 data that breaks a rule of the syntax dictionary; `ai` is None for whole-input rules."""

    def __init__(self, message: str, *, ai: str | None, rule: str) -> None:
        where = f"AI ({ai}): " if ai is not None else ""
        super().__init__(f"{where}{message} [{rule}]", field="data")
        self.ai = ai
        self.rule = rule


# --- the dictionary --------------------------------------------------------------------------

_CSETS: dict[str, re.Pattern[str]] = {
    "N": re.compile(r"[0-9]*"),
    "X": re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]*"),
    "Y": re.compile(r"[#\-/0-9A-Z]*"),
    "Z": re.compile(r"[\-0-9A-Z_a-z]*={0,2}"),
}
_CSET_NAMES = {"N": "numeric", "X": "cset82", "Y": "cset39", "Z": "cset64"}
# Character classes for the compiled whole-value pattern; set 64's padding rule is a linter there.
_CSET_CLASSES = {
    "N": "[0-9]",
    "X": "[!\"%&'()*+,\\-./0-9:;<=>?A-Z_a-z]",
    "Y": "[#\\-/0-9A-Z]",
    "Z": "[\\-0-9A-Z_a-z=]",
}
_COMPONENT_RE = re.compile(r"^(\[)?([NXYZ])(?:(\d+)|\.\.(\d+))(\])?((?:,[a-z0-9]+)*)$")
_DATE_LINTERS = frozenset({"yymmd0", "yymmdd", "yyyymmd0", "yyyymmdd"})

# A linter takes the component's text and the reference day (for two-digit years) and returns
# None or the reason the component fails.
Linter = Callable[[str, date], "str | None"]


@dataclass(frozen=True, slots=True)
class Component:
    """One part of an AI's value: character set, length bounds, linters; optional tails may be absent."""

    cset: str
    min_length: int
    max_length: int
    optional: bool
    linters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AIDefinition:
    """One AI as the dictionary defines it."""

    ai: str
    title: str
    separator_required: bool  # False for the predefined-length AIs flagged "*"
    dl_attribute: bool  # flagged "?": may be a Digital Link query parameter
    components: tuple[Component, ...]
    requires: tuple[tuple[tuple[str, ...], ...], ...]  # each req=: any one group, all AIs of it
    excludes: tuple[str, ...]
    dl_qualifiers: tuple[tuple[str, ...], ...] | None  # None: not a Digital Link primary key
    min_length: int
    max_length: int
    date_format: str | None  # the date linter of the first component, for AIs that carry a date
    # Compiled at load: one pattern for the whole value (a group per component) and the linters
    # to run on each group, so a valid value costs one regex match and its linters.
    pattern: re.Pattern[str]
    lint_plan: tuple[tuple[int, str, Linter | None], ...]  # None: a linter not applied here


@dataclass(frozen=True, slots=True)
class SyntaxDictionary:
    """The parsed dictionary: definitions by AI and the valid Digital Link path AI sequences."""

    release: str
    definitions: Mapping[str, AIDefinition]
    dl_path_sequences: frozenset[tuple[str, ...]]

    def lookup(self, ai: str) -> AIDefinition | None:
        return self.definitions.get(ai)

    def at(self, data: str, pos: int) -> AIDefinition | None:
        """The AI that starts `data` at `pos` (AIs are prefix-free, so at most one matches)."""
        get = self.definitions.get
        return get(data[pos : pos + 2]) or get(data[pos : pos + 3]) or get(data[pos : pos + 4])


def _expand(ais: str) -> list[str]:
    if "-" not in ais:
        return [ais]
    first, last = ais.split("-")
    return [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]


def _subsequences(items: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
    for mask in range(1 << len(items)):
        yield tuple(item for i, item in enumerate(items) if mask & (1 << i))


def _compile(
    components: list[Component],
) -> tuple[re.Pattern[str], tuple[tuple[int, str, Linter | None], ...]]:
    parts: list[str] = []
    plan: list[tuple[int, str, Linter | None]] = []
    for group, component in enumerate(components, start=1):
        body = f"({_CSET_CLASSES[component.cset]}{{{component.min_length},{component.max_length}}})"
        parts.append(f"(?:{body})?" if component.optional else body)
        if component.cset == "Z":
            plan.append((group, "cset64", _cset64))
        for name in component.linters:
            if group == 1 and name in _DATE_LINTERS:
                continue  # read (and checked) as the element's date
            plan.append((group, name, _LINTERS.get(name)))
    return re.compile("".join(parts)), tuple(plan)


def load_dictionary(text: str) -> SyntaxDictionary:
    """Parse the Barcode Syntax Dictionary's text format (see the file's own header)."""
    release = ""
    definitions: dict[str, AIDefinition] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            found = re.match(r"#\s*Release:\s*(\S+)", line)
            if found:
                release = found.group(1)
            continue
        if not line:
            continue
        body, _, title = line.partition("#")
        tokens = body.split()
        ais, rest = tokens[0], tokens[1:]
        flags = ""
        if rest and not _COMPONENT_RE.match(rest[0]) and "=" not in rest[0] and rest[0] != "dlpkey":
            flags, rest = rest[0], rest[1:]
        components: list[Component] = []
        requires: list[tuple[tuple[str, ...], ...]] = []
        excludes: list[str] = []
        qualifiers: list[tuple[str, ...]] | None = None
        for token in rest:
            spec = _COMPONENT_RE.match(token)
            if spec:
                opened, cset, fixed, upto, closed, linters = spec.groups()
                if bool(opened) != bool(closed):
                    raise ValueError(f"line {number}: unbalanced optional component {token!r}")
                low = int(fixed) if fixed else 1
                high = int(fixed) if fixed else int(upto)
                names = tuple(name for name in linters.split(",") if name)
                components.append(Component(cset, low, high, bool(opened), names))
            elif token.startswith("req="):
                requires.append(tuple(tuple(group.split("+")) for group in token[4:].split(",")))
            elif token.startswith("ex="):
                excludes.extend(token[3:].split(","))
            elif token == "dlpkey":
                qualifiers = (qualifiers or []) + [()]
            elif token.startswith("dlpkey="):
                alternatives = [tuple(alt.split(",")) for alt in token[7:].split("|")]
                qualifiers = (qualifiers or []) + alternatives
            else:
                raise ValueError(f"line {number}: unknown token {token!r}")
        if not components:
            raise ValueError(f"line {number}: AI {ais} has no components")
        pattern, plan = _compile(components)
        for ai in _expand(ais):
            definitions[ai] = AIDefinition(
                ai=ai,
                title=title.strip() or ai,
                separator_required="*" not in flags,
                dl_attribute="?" in flags,
                components=tuple(components),
                requires=tuple(requires),
                excludes=tuple(excludes),
                dl_qualifiers=tuple(qualifiers) if qualifiers is not None else None,
                min_length=sum(c.min_length for c in components if not c.optional),
                max_length=sum(c.max_length for c in components),
                date_format=next((n for n in components[0].linters if n in _DATE_LINTERS), None),
                pattern=pattern,
                lint_plan=plan,
            )
    sequences: set[tuple[str, ...]] = set()
    for definition in definitions.values():
        for alternative in definition.dl_qualifiers or ():
            for tail in _subsequences(alternative):
                sequences.add((definition.ai, *tail))
    return SyntaxDictionary(release, definitions, frozenset(sequences))


@functools.cache
def syntax_dictionary() -> SyntaxDictionary:
    """The packaged dictionary, parsed once."""
    text = (resources.files("coldchain.standards") / "gs1-syntax-dictionary.txt").read_text("utf-8")
    return load_dictionary(text)


# --- linters (the dictionary's names; each returns None or why the component fails) ------------


def _csum(text: str, today: date | None = None) -> str | None:
    if not text.isdigit():
        return "check digit needs digits"
    if gtin_check_digit(text[:-1]) != ord(text[-1]) - 48:
        return f"wrong check digit {text[-1]} (expected {gtin_check_digit(text[:-1])})"
    return None


_CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_CSET32 = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_PRIMES = [p for p in range(2, 600) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _csumalpha(text: str, today: date) -> str | None:
    if len(text) < 2:
        return "too short for a check character pair"
    body = text[:-2]
    total = 0
    for i, ch in enumerate(reversed(body)):
        weight = _CSET82.find(ch)
        if weight < 0:
            return f"character {ch!r} outside set 82"
        total += weight * _PRIMES[i]
    total %= 1021
    if text[-2:] != _CSET32[total >> 5] + _CSET32[total & 31]:
        return "wrong check character pair"
    return None


def _century_year(yy: int, today: date) -> int:
    """GS1 General Specifications 7.12: a two-digit year is within 49 years ahead or 50 behind."""
    century, current = divmod(today.year, 100)
    diff = yy - current
    if diff >= 51:
        return (century - 1) * 100 + yy
    if diff > -50:
        return century * 100 + yy
    return (century + 1) * 100 + yy


def _check_date(year: int, month: int, day: int, *, day_zero: bool) -> str | None:
    if not 1 <= month <= 12:
        return f"month {month:02d} does not exist"
    if day == 0 and day_zero:
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return f"day {day:02d} does not exist in {year}-{month:02d}"
    return None


def _date_linter(four_digit_year: bool, day_zero: bool) -> Linter:
    size = 8 if four_digit_year else 6

    def lint(text: str, today: date) -> str | None:
        if len(text) != size or not text.isdigit():
            return "a date needs " + ("YYYYMMDD" if four_digit_year else "YYMMDD")
        year = int(text[:4]) if four_digit_year else _century_year(int(text[:2]), today)
        return _check_date(year, int(text[-4:-2]), int(text[-2:]), day_zero=day_zero)

    return lint


def _range_linter(name: str, high: int) -> Linter:
    def lint(text: str, today: date) -> str | None:
        return None if text.isdigit() and int(text) <= high else f"{name} {text!r} out of range"

    return lint


def _hhmi(text: str, today: date) -> str | None:
    if len(text) != 4 or not text.isdigit() or int(text[:2]) > 23 or int(text[2:]) > 59:
        return f"time {text!r} is not HHMI"
    return None


def _pieceoftotal(text: str, today: date) -> str | None:
    half = len(text) // 2
    if not text.isdigit() or len(text) % 2:
        return "piece of total needs an even number of digits"
    piece, total = int(text[:half]), int(text[half:])
    if piece == 0 or total == 0:
        return "piece number and total must be non-zero"
    return "piece number exceeds the total" if piece > total else None


def _posinseqslash(text: str, today: date) -> str | None:
    found = re.fullmatch(r"([1-9][0-9]*)/([1-9][0-9]*)", text)
    if not found:
        return f"position in sequence {text!r} is not N/M"
    return "position exceeds the end" if int(found.group(1)) > int(found.group(2)) else None


def _gcp(offset: int) -> Linter:
    def lint(text: str, today: date) -> str | None:
        prefix = text[offset : offset + 4]
        return None if len(prefix) == 4 and prefix.isdigit() else "no GS1 Company Prefix"

    return lint


def _pcenc(text: str, today: date) -> str | None:
    pos = text.find("%")
    while pos >= 0:
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", text[pos + 1 : pos + 3]):
            return "invalid percent sequence"
        pos = text.find("%", pos + 3)
    return None


def _cset64(text: str, today: date) -> str | None:
    return None if _CSETS["Z"].fullmatch(text) else "characters or padding outside cset64"


_LINTERS: dict[str, Linter] = {
    "csum": _csum,
    "csumalpha": _csumalpha,
    "yymmd0": _date_linter(False, True),
    "yymmdd": _date_linter(False, False),
    "yyyymmd0": _date_linter(True, True),
    "yyyymmdd": _date_linter(True, False),
    "hh": _range_linter("hour", 23),
    "mi": _range_linter("minute", 59),
    "ss": _range_linter("second", 59),
    "hhmi": _hhmi,
    "nonzero": lambda t, _: "must not be zero" if t.strip("0") == "" else None,
    "zero": lambda t, _: None if t == "0" else "must be 0",
    "yesno": lambda t, _: None if t in ("0", "1") else "must be 0 or 1",
    "winding": lambda t, _: None if t in ("0", "1", "9") else "winding must be 0, 1 or 9",
    "iso5218": lambda t, _: None if t in ("0", "1", "2", "9") else "not an ISO/IEC 5218 sex code",
    "hyphen": lambda t, _: None if t.strip("-") == "" else "only '-' is allowed",
    "nozeroprefix": lambda t, _: "must not start with 0" if t.startswith("0") else None,
    "hasnondigit": lambda t, _: None if not t.isdigit() else "needs a non-digit character",
    "importeridx": lambda t, _: None if re.fullmatch(r"[\-0-9A-Z_a-z]", t) else "bad importer index",
    "pieceoftotal": _pieceoftotal,
    "posinseqslash": _posinseqslash,
    "gcppos1": _gcp(0),
    "gcppos2": _gcp(1),
    "latitude": _range_linter("latitude", 1_800_000_000),
    "longitude": _range_linter("longitude", 3_600_000_000),
    "pcenc": _pcenc,
}


def _validate_value(definition: AIDefinition, value: str, today: date) -> date | None:
    """Apply each component's length, character set and linters, as the syntax engine does;
    return the date a date AI carries (DD=00 read as the month's last day)."""
    match = definition.pattern.fullmatch(value)
    if match is None:
        _explain(definition, value, today)
        raise GS1Error(f"value {value!r} does not fit its format", ai=definition.ai, rule="format")
    for group, name, linter in definition.lint_plan:
        part = match.group(group)
        if part is not None and linter is not None:
            reason = linter(part, today)
            if reason is not None:
                raise GS1Error(f"{part!r}: {reason}", ai=definition.ai, rule=name)
    if definition.date_format is None:
        return None
    read = _read_date(definition.date_format, match.group(1), today)
    if isinstance(read, str):
        raise GS1Error(f"{match.group(1)!r}: {read}", ai=definition.ai, rule=definition.date_format)
    return read


def _explain(definition: AIDefinition, value: str, today: date) -> None:
    """Walk the components as the syntax engine does and raise the first rule the value breaks."""
    ai = definition.ai
    if not value:
        raise GS1Error("value is empty", ai=ai, rule="length")
    if len(value) < definition.min_length:
        raise GS1Error(f"value {value!r} is too short", ai=ai, rule="length")
    if len(value) > definition.max_length:
        raise GS1Error(f"value {value!r} is too long", ai=ai, rule="length")
    pos = 0
    for component in definition.components:
        size = min(len(value) - pos, component.max_length)
        if component.optional and size == 0:
            continue
        if size < component.min_length:
            raise GS1Error(f"value {value!r} has the wrong length", ai=ai, rule="length")
        part = value[pos : pos + size]
        if not _CSETS[component.cset].fullmatch(part):
            name = _CSET_NAMES[component.cset]
            raise GS1Error(f"{part!r} has characters outside {name}", ai=ai, rule=name)
        for name in component.linters:
            linter = _LINTERS.get(name)
            reason = linter(part, today) if linter is not None else None
            if reason is not None:
                raise GS1Error(f"{part!r}: {reason}", ai=ai, rule=name)
        pos += size


# --- the result ------------------------------------------------------------------------------


class Element(NamedTuple):
    """One AI and its value; `date` for date AIs (DD=00 read as the month's last day)."""

    ai: str
    value: str
    title: str
    date: date | None = None


Source = Literal["hri", "element_string", "scan_data", "digital_link"]


@dataclass(frozen=True, slots=True)
class GS1Data:
    """What a GS1 carrier said, validated; the common identifiers as properties."""

    elements: tuple[Element, ...]
    source: Source
    symbology: str | None = None

    def value(self, ai: str) -> str | None:
        return next((e.value for e in self.elements if e.ai == ai), None)

    @property
    def hri(self) -> str:
        """The human-readable interpretation: `(AI)value` runs, a literal `(` escaped as `\\(`."""
        return "".join(f"({e.ai}){e.value.replace('(', chr(92) + '(')}" for e in self.elements)

    @property
    def element_string(self) -> str:
        """The element string with GS (0x1D) after every value that needs a separator."""
        out: list[str] = []
        dictionary = syntax_dictionary()
        for i, e in enumerate(self.elements):
            out.append(e.ai + e.value)
            definition = dictionary.lookup(e.ai)
            if i < len(self.elements) - 1 and definition is not None and definition.separator_required:
                out.append("\x1d")
        return "".join(out)

    @property
    def gtin(self) -> str | None:
        return self.value("01")

    @property
    def lot(self) -> str | None:
        return self.value("10")

    @property
    def serial(self) -> str | None:
        return self.value("21")

    @property
    def sscc(self) -> str | None:
        return self.value("00")

    @property
    def expiry(self) -> date | None:
        return next((e.date for e in self.elements if e.ai == "17"), None)

    def digital_link(self, stem: str = CANONICAL_STEM) -> str | None:
        """The Digital Link URI for this data, or None when it has no key or an AI cannot go in one."""
        dictionary = syntax_dictionary()
        key = next(
            (e for e in self.elements if (d := dictionary.lookup(e.ai)) and d.dl_qualifiers is not None),
            None,
        )
        if key is None:
            return None
        key_definition = dictionary.definitions[key.ai]
        present = {e.ai: e.value for e in self.elements}
        alternatives = key_definition.dl_qualifiers or ((),)
        chosen = max(alternatives, key=lambda alt: sum(1 for q in alt if q in present))
        path = [key.ai, *(q for q in chosen if q in present)]
        query: list[str] = []
        for e in self.elements:
            if e.ai in path:
                continue
            definition = dictionary.definitions[e.ai]
            if not definition.dl_attribute:
                return None
            query.append(f"{e.ai}={quote(e.value, safe='')}")
        uri = stem.rstrip("/") + "".join(f"/{ai}/{quote(present[ai], safe='')}" for ai in path)
        return uri + ("?" + "&".join(query) if query else "")


# --- parsing ---------------------------------------------------------------------------------


def parse(data: str, *, check_requisites: bool = True, today: date | None = None) -> GS1Data:
    """Parse and validate GS1 data in any carrier form; raise GS1Error naming the AI and rule."""
    text = data.strip(" \r\n\t")
    if not text:
        raise GS1Error("no data", ai=None, rule="empty")
    if text[0] == "]":
        source: Source = "scan_data"
        symbology: str | None = text[:3]
        pairs = _scan_data(text)
    elif text[0] == "(":
        source, symbology = "hri", None
        pairs = _bracketed(text)
    elif _SCHEME.match(text):
        source, symbology = "digital_link", None
        pairs = _digital_link_pairs(text)
    else:
        source, symbology = "element_string", None
        pairs = _element_string(text.replace("\x1d", "^"))
    return _finish(pairs, source, symbology, check_requisites, today or date.today())


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

# An AI and its value as extracted; _finish validates them (components, linters, associations).
Pair = tuple[AIDefinition, str]


def _element_string(text: str) -> list[Pair]:
    """An element string with `^` for FNC1/GS; a leading FNC1 is optional."""
    dictionary = syntax_dictionary()
    pos = 1 if text.startswith("^") else 0
    end_of_data = len(text)
    if pos >= end_of_data:
        raise GS1Error("no AI data", ai=None, rule="empty")
    pairs: list[Pair] = []
    while pos < end_of_data:
        definition = dictionary.at(text, pos)
        if definition is None:
            raise GS1Error(f"no known AI starts {text[pos : pos + 4]!r}", ai=None, rule="unknown-ai")
        pos += len(definition.ai)
        end = text.find("^", pos)
        if end < 0:
            end = end_of_data
        if not definition.separator_required:
            end = min(end, pos + definition.max_length)
        elif end - pos > definition.max_length:
            raise GS1Error(
                f"value is too long (more than {definition.max_length}; separator missing?)",
                ai=definition.ai,
                rule="length",
            )
        pairs.append((definition, text[pos:end]))
        pos = end + 1 if end < end_of_data and text[end] == "^" else end
    return pairs


def _bracketed(text: str) -> list[Pair]:
    dictionary = syntax_dictionary()
    pairs: list[Pair] = []
    pos = 0
    while pos < len(text):
        if text[pos] != "(":
            raise GS1Error("expected '(' to start an AI", ai=None, rule="hri-syntax")
        close = text.find(")", pos)
        if close < 0:
            raise GS1Error("an AI's ')' is missing", ai=None, rule="hri-syntax")
        ai = text[pos + 1 : close]
        definition = dictionary.lookup(ai)
        if definition is None:
            raise GS1Error("unknown AI", ai=ai, rule="unknown-ai")
        start = close + 1
        chunks: list[str] = []
        scan = start
        while True:
            nxt = text.find("(", scan)
            if nxt < 0:
                chunks.append(text[start:])
                pos = len(text)
                break
            if text[nxt - 1] == "\\":
                chunks.append(text[start : nxt - 1] + "(")
                start = scan = nxt + 1
                continue
            chunks.append(text[start:nxt])
            pos = nxt
            break
        value = "".join(chunks)
        if "^" in value:
            raise GS1Error("value contains '^'", ai=ai, rule="hri-syntax")
        pairs.append((definition, value))
    return pairs


# Symbology identifiers (ISO/IEC 15424) of carriers that hold GS1 AI data, and those that hold
# plain data (where a Digital Link URI may be).
_AI_SYMBOLOGIES = frozenset({"C1", "e0", "d2", "Q3", "J1"})
_PLAIN_SYMBOLOGIES = frozenset({"d1", "Q1", "J0"})


def _scan_data(text: str) -> list[Pair]:
    if len(text) < 3:
        raise GS1Error("symbology identifier is incomplete", ai=None, rule="symbology")
    symbology, body = text[1:3], text[3:]
    if symbology in _AI_SYMBOLOGIES:
        if "^" in body:
            raise GS1Error("scan data contains '^'", ai=None, rule="scan-syntax")
        return _element_string(body.replace("\x1d", "^"))
    if symbology in ("E0", "E4"):
        size = 13 if symbology == "E0" else 8
        primary, composite = body[:size], body[size:]
        if len(primary) < size or not primary.isdigit():
            raise GS1Error(f"EAN primary must be {size} digits", ai="01", rule="symbology")
        if _csum(primary) is not None:
            raise GS1Error(f"{primary!r}: wrong check digit", ai="01", rule="csum")
        pairs: list[Pair] = [(syntax_dictionary().definitions["01"], primary.zfill(14))]
        if composite:
            if not composite.startswith("|]e0"):
                raise GS1Error("EAN primary message is too long", ai=None, rule="symbology")
            pairs += _element_string(composite[4:].replace("\x1d", "^"))
        return pairs
    if symbology in _PLAIN_SYMBOLOGIES:
        if _SCHEME.match(body):
            return _digital_link_pairs(body)
        raise GS1Error(
            f"]{symbology} data is neither GS1 AI data nor a Digital Link", ai=None, rule="symbology"
        )
    raise GS1Error(f"symbology identifier ]{symbology} is not a GS1 carrier", ai=None, rule="symbology")


_URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_DOMAIN = re.compile(r"[_~?#@!$&'()*+,;=%]")


def _digital_link_pairs(uri: str) -> list[Pair]:
    """Path and query AIs of a Digital Link URI, checked as GS1's syntax engine checks them."""
    dictionary = syntax_dictionary()
    if not _URI_CHARACTERS.fullmatch(uri):
        raise GS1Error("URI contains characters a URI may not hold", ai=None, rule="uri-syntax")
    if uri.startswith(("https://", "HTTPS://")):
        rest = uri[8:]
    elif uri.startswith(("http://", "HTTP://")):
        rest = uri[7:]
    else:
        raise GS1Error("scheme must be http or https (one case)", ai=None, rule="uri-syntax")
    slash = rest.find("/")
    domain = rest[:slash] if slash >= 0 else rest
    if slash < 1:
        raise GS1Error("URI has no domain and path", ai=None, rule="uri-syntax")
    if _BAD_DOMAIN.search(domain):
        raise GS1Error("domain contains an illegal character", ai=None, rule="uri-syntax")
    path = rest[slash:].split("#", 1)[0]
    path, _, query = path.partition("?")
    segments = path[1:].split("/")

    # The rightmost /AI/value pair whose AI is a primary key starts the Digital Link path.
    start = None
    i = len(segments) - 2
    while i >= 0:
        definition = dictionary.lookup(segments[i])
        if definition is None:
            break
        if definition.dl_qualifiers is not None:
            start = i
            break
        i -= 2
    if start is None:
        raise GS1Error("no GS1 Digital Link primary key in the path", ai=None, rule="dl-path")
    path_pairs: list[Pair] = []
    for j in range(start, len(segments), 2):
        definition = dictionary.definitions[segments[j]]
        raw = segments[j + 1]
        if not raw:
            raise GS1Error("path value is empty", ai=definition.ai, rule="dl-path")
        value = unquote(raw) if "%" in raw else raw
        if "\x00" in value:
            raise GS1Error("decoded value contains NUL", ai=definition.ai, rule="dl-path")
        _length_check(definition, value)
        path_pairs.append((definition, value))

    query_pairs: list[Pair] = []
    for parameter in query.split("&"):
        name, equals, raw = parameter.partition("=")
        if not equals:
            continue  # an empty parameter or a singleton: not AI data
        if not name.isdigit():
            continue  # a non-AI parameter, kept out of the AI data
        definition = dictionary.lookup(name)
        if definition is None:
            raise GS1Error("unknown AI in the query", ai=name, rule="unknown-ai")
        if not raw:
            raise GS1Error("query value is empty", ai=name, rule="dl-query")
        value = unquote_plus(raw) if "%" in raw or "+" in raw else raw
        if "\x00" in value:
            raise GS1Error("decoded value contains NUL", ai=name, rule="dl-query")
        _length_check(definition, value)
        query_pairs.append((definition, value))

    broken = _dl_structure(tuple(d.ai for d, _ in path_pairs), tuple(d.ai for d, _ in query_pairs))
    if broken is not None:
        message, ai, rule = broken
        raise GS1Error(message, ai=ai, rule=rule)
    return path_pairs + query_pairs


@functools.lru_cache(maxsize=4096)
def _dl_structure(path: tuple[str, ...], query: tuple[str, ...]) -> tuple[str, str, str] | None:
    """The first rule a Digital Link's AI layout breaks, as (message, AI, rule), or None.

    Depends only on which AIs sit in the path and the query, so it is cached like _associations.
    """
    dictionary = syntax_dictionary()
    if path not in dictionary.dl_path_sequences:
        return (
            "path AIs are not the key's qualifiers in the dictionary's order: /" + "/".join(path),
            path[-1],
            "dl-qualifier-order",
        )
    seen: set[str] = set()
    for ai in path + query:
        if ai in seen:
            return "AI appears more than once", ai, "dl-duplicate"
        seen.add(ai)
    for ai in query:
        if not dictionary.definitions[ai].dl_attribute:
            return "AI may not be a Digital Link query attribute", ai, "dl-query-attribute"
        for k in range(1, len(path) + 1):
            if (*path[:k], ai, *path[k:]) in dictionary.dl_path_sequences:
                return "AI is a key qualifier and belongs in the path", ai, "dl-qualifier-in-query"
    return None


def _length_check(definition: AIDefinition, value: str) -> None:
    # Done before the linters, as the engine does: a checksum failure on a value of the wrong
    # length would only mislead (a zero-suppressed GTIN-13 is "too short", not a bad check digit).
    if len(value) < definition.min_length:
        raise GS1Error(f"value {value!r} is too short", ai=definition.ai, rule="length")
    if len(value) > definition.max_length:
        raise GS1Error(f"value {value!r} is too long", ai=definition.ai, rule="length")
    if "^" in value:
        raise GS1Error("value contains '^'", ai=definition.ai, rule="length")


def _present(pattern: str, ais: list[str], ignore: str) -> str | None:
    """The AI among `ais` matching `pattern` ("01", "310n", "35nn"), `ignore` itself excepted."""
    if pattern[-1] != "n":
        return pattern if pattern != ignore and pattern in ais else None
    prefix = pattern.rstrip("n")
    for ai in ais:
        if ai != ignore and len(ai) == len(pattern) and ai.startswith(prefix):
            return ai
    return None


@functools.lru_cache(maxsize=4096)
def _associations(ais: tuple[str, ...], check_requisites: bool) -> tuple[str, str, str] | None:
    """The first ex=/req= rule the AIs present break, as (message, AI, rule), or None.

    A pure function of which AIs are present, so it is cached: labels repeat a few combinations.
    """
    present = list(ais)
    definitions = syntax_dictionary().definitions
    for ai in present:
        definition = definitions[ai]
        for pattern in definition.excludes:
            other = _present(pattern, present, ai)
            if other is not None:
                return f"may not appear with ({other})", ai, "ex=" + ",".join(definition.excludes)
        if check_requisites:
            for groups in definition.requires:
                if not any(all(_present(p, present, ai) for p in group) for group in groups):
                    wanted = ",".join("+".join(group) for group in groups)
                    return f"needs one of {wanted} with it", ai, "req=" + wanted
    return None


def _finish(
    pairs: list[Pair], source: Source, symbology: str | None, check_requisites: bool, today: date
) -> GS1Data:
    dates = [_validate_value(definition, value, today) for definition, value in pairs]
    values: dict[str, str] = {}
    for definition, value in pairs:
        earlier = values.setdefault(definition.ai, value)
        if earlier != value:
            raise GS1Error("repeated with different values", ai=definition.ai, rule="repeat")
    broken = _associations(tuple(values), check_requisites)
    if broken is not None:
        message, ai, rule = broken
        raise GS1Error(message, ai=ai, rule=rule)
    definitions = syntax_dictionary().definitions
    if "8030" in values:
        for ai in ("253", "255", "8003"):
            if ai in values and len(values[ai]) == definitions[ai].min_length:
                raise GS1Error(
                    "a digital signature (8030) needs the serial component", ai=ai, rule="digsig-serial"
                )
    elements = tuple([Element(d.ai, v, d.title, t) for (d, v), t in zip(pairs, dates, strict=True)])
    return GS1Data(elements, source, symbology)


def _read_date(date_format: str, text: str, today: date) -> date | str:
    """The date in a YYMMDD/YYYYMMDD component, DD=00 as the month's last day, or why it is none."""
    if date_format.startswith("yyyy"):
        year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    else:
        year, month, day = _century_year(int(text[:2]), today), int(text[2:4]), int(text[4:6])
    if not 1 <= month <= 12:
        return f"month {month:02d} does not exist"
    last = _DAYS_IN_MONTH[month] if month != 2 else calendar.monthrange(year, 2)[1]
    if day == 0 and date_format[-1] == "0":
        return date(year, month, last)
    if not 1 <= day <= last:
        return f"day {day:02d} does not exist in {year}-{month:02d}"
    return date(year, month, day)


_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def identify_lot(data: str) -> tuple[str, str]:
    """(GTIN, lot) named by GS1 data in any form, e.g. an `?id=` query parameter of the API."""
    parsed = parse(data)
    if parsed.gtin is None or parsed.lot is None:
        raise GS1Error("the data names no lot: it needs (01) and (10)", ai=None, rule="lot-key")
    return parsed.gtin, parsed.lot


def identify_product(data: str) -> str:
    """The GTIN named by GS1 data in any form, or by a bare GTIN-8/12/13/14."""
    if data.isdigit():
        return normalize_gtin(data)
    parsed = parse(data)
    if parsed.gtin is None:
        raise GS1Error("the data names no product: it needs (01)", ai=None, rule="product-key")
    return parsed.gtin
