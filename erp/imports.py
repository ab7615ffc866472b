"""Bulk import of master data from an ERP: CSV or JSON lines in, every row checked, all or nothing.

A file is read whole (UTF-8 with or without a BOM; CSV with `,` or `;` and a header row of column
names, or JSON lines, one object per line), each row is checked in Python (GTIN and GLN check
digits, lot syntax, dates, numbers, duplicates and overlapping windows inside the file), the rows
go to a staging table by binary COPY, the database checks what only it knows (unknown product,
lot, device or shipment; a window overlapping an existing assignment; a lot registered with
another expiry), and then set-based upserts write everything in one transaction. Any error: the
transaction is rolled back and the report lists every error found (row, field, reason). A dry run
does all of it and rolls back, so its counts are exactly what a real run would change. Upserts
write only rows whose values differ, so importing the same file again changes nothing (and leaves
no import record). Rows are numbered from 1, the header being row 0.

Columns per kind (`*` required; names are case-insensitive, spaces become `_`):

- products: gtin*, name*, range_min_c, range_max_c, default_profile, stability_budget_s (or
  stability_budget_h), activation_energy_kj_mol
- lots: gtin*, lot*, expiry, quantity, serials (`|`- or space-separated; `A..B` is a range),
  stability_budget_s (or _h); or instead of gtin/lot/expiry a `gs1` column with any GS1 form
- sites: gln*, name*, address
- shipments: id*, profile*, origin, destination, origin_gln, destination_gln, carrier, mode,
  planned_departure, planned_arrival; and per row optionally one line: gtin, lot, quantity (rows
  of one shipment repeat its header, which must agree)
- assignments: device*, shipment*, from*, to
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import orjson
import psycopg

from coldchain.domain import SHIPMENT_ID_RE, validate_device_id
from coldchain.errors import ValidationError
from coldchain.gs1 import GS1Error, normalize_gtin, validate_lot
from coldchain.gs1 import parse as parse_gs1
from coldchain.master_data import (
    check_activation_energy,
    check_gln,
    check_labelled_range,
    check_mode,
    check_serial,
    check_times,
    check_window,
)
from coldchain.presets import list_presets
from storage import device_config
from storage import imports as store

MAX_REPORTED_ERRORS = 1000


class Kind(StrEnum):
    PRODUCTS = "products"
    LOTS = "lots"
    SITES = "sites"
    SHIPMENTS = "shipments"
    ASSIGNMENTS = "assignments"


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str | None
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What an import found and did; `committed` is false for a dry run or when any row failed."""

    kind: Kind
    dry_run: bool
    rows: int = 0
    committed: bool = False
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    changes: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    import_id: int | None = None
    sha256: str = ""

    def add(self, row: int, field_name: str | None, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(RowError(row, field_name, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "dry_run": self.dry_run,
            "committed": self.committed,
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "changes": self.changes,
            "errors": [{"row": e.row, "field": e.field, "reason": e.reason} for e in self.errors],
            "error_count": self.error_count,
            "errors_truncated": self.error_count > len(self.errors),
            "import_id": self.import_id,
            "sha256": self.sha256,
        }


# Progress: (phase, done, total). Phases: "reading", "checking", "writing".
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


class _Bad(Exception):
    """One field of one row is wrong; the reason goes into the report."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def _shared(check: Callable[..., Any], *args: Any, field: str) -> Any:
    """Apply one of the master-data rules the single-record API applies too (coldchain.master_data)."""
    try:
        return check(*args, field=field)
    except ValidationError as exc:
        raise _Bad(exc.field or field, str(exc)) from None


# --- reading the file --------------------------------------------------------------------------

_ALIASES = {
    "batch": "lot",
    "lot_number": "lot",
    "batch_lot": "lot",
    "expiry_date": "expiry",
    "expiration_date": "expiry",
    "best_before": "expiry",
    "qty": "quantity",
    "serial_numbers": "serials",
    "device_id": "device",
    "logger": "device",
    "shipment_id": "shipment",
    "start": "from",
    "end": "to",
    "profile_id": "profile",
    "gtin14": "gtin",
}

_COLUMNS: dict[Kind, tuple[frozenset[str], frozenset[str]]] = {  # (required, optional)
    Kind.PRODUCTS: (
        frozenset({"gtin", "name"}),
        frozenset(
            {
                "range_min_c",
                "range_max_c",
                "default_profile",
                "stability_budget_s",
                "stability_budget_h",
                "activation_energy_kj_mol",
            }
        ),
    ),
    Kind.LOTS: (
        frozenset({"gtin", "lot"}),
        frozenset({"gs1", "expiry", "quantity", "serials", "stability_budget_s", "stability_budget_h"}),
    ),
    Kind.SITES: (frozenset({"gln", "name"}), frozenset({"address"})),
    Kind.SHIPMENTS: (
        frozenset({"id", "profile"}),
        frozenset(
            {
                "origin",
                "destination",
                "origin_gln",
                "destination_gln",
                "carrier",
                "mode",
                "planned_departure",
                "planned_arrival",
                "gtin",
                "lot",
                "quantity",
            }
        ),
    ),
    Kind.ASSIGNMENTS: (frozenset({"device", "shipment", "from"}), frozenset({"to"})),
}


def _column_name(raw: str) -> str:
    name = re.sub(r"\s+", "_", raw.strip().lower())
    return _ALIASES.get(name, name)


def read_records(data: bytes, report: ImportReport) -> list[tuple[int, dict[str, Any]]]:
    """The file's rows as (row number, {column: value}); problems with the file itself are row 0."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.add(0, None, f"the file is not UTF-8 (byte {exc.start})")
        return []
    stripped = text.lstrip()
    if not stripped:
        report.add(0, None, "the file is empty")
        return []
    records = _json_lines(text, report) if stripped[0] == "{" else _csv(text, report)
    required, optional = _COLUMNS[report.kind]
    seen: set[str] = set()
    for _, rec in records:
        seen.update(rec)
    unknown = seen - required - optional
    if report.kind is Kind.LOTS and "gs1" in seen:
        required = frozenset()  # a gs1 column stands for gtin and lot
    for name in sorted(unknown):
        report.add(0, name, f"unknown column {name!r} for {report.kind.value}")
    if records or report.error_count == 0:
        missing = required - seen
        for name in sorted(missing):
            report.add(0, name, f"required column {name!r} is missing")
    return records


def _csv(text: str, report: ImportReport) -> list[tuple[int, dict[str, Any]]]:
    first_line = text.split("\n", 1)[0]
    delimiter = max((";", ",", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [_column_name(h) for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        report.add(0, None, f"no header row ({exc})")
        return []
    duplicates = {h for h in header if header.count(h) > 1}
    for name in sorted(duplicates):
        report.add(0, name, f"column {name!r} appears twice")
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        for number, cells in enumerate(reader, start=1):
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                report.add(number, None, f"{len(cells)} cells but {len(header)} columns")
                continue
            records.append((number, {h: v for h, c in zip(header, cells, strict=False) if (v := c.strip())}))
    except csv.Error as exc:
        report.add(reader.line_num, None, f"CSV syntax: {exc}")
    return records


def _json_lines(text: str, report: ImportReport) -> list[tuple[int, dict[str, Any]]]:
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            report.add(number, None, f"not JSON: {exc}")
            continue
        if not isinstance(value, dict):
            report.add(number, None, "each line must be a JSON object")
            continue
        records.append((number, {_column_name(k): v for k, v in value.items() if v is not None and v != ""}))
    return records


# --- field parsers -------------------------------------------------------------------------------


def _text(rec: dict[str, Any], name: str, *, required: bool = False, max_length: int = 200) -> str | None:
    value = rec.get(name)
    if value is None:
        if required:
            raise _Bad(name, f"{name} is required")
        return None
    if not isinstance(value, str):
        value = str(value)
    if len(value) > max_length:
        raise _Bad(name, f"{name} is longer than {max_length} characters")
    return value


# Files repeat the same GTINs and dates on many rows: each distinct value is checked once.
@functools.lru_cache(maxsize=65_536)
def _checked_gtin(value: str) -> tuple[str | None, str | None]:
    try:
        return normalize_gtin(value), None
    except ValidationError as exc:
        reason = "bad GTIN check digit" if "check digit" in str(exc) else str(exc)
        return None, f"{reason}: {value}"


@functools.lru_cache(maxsize=65_536)
def _checked_date(value: str) -> date | None:
    try:
        if len(value) == 6 and value.isdigit():  # GS1 YYMMDD, DD=00 the month's last day
            return parse_gs1(f"(17){value}", check_requisites=False).expiry
        return date.fromisoformat(value)
    except (ValueError, GS1Error):
        return None


def _gtin(rec: dict[str, Any], name: str = "gtin") -> str:
    value = _text(rec, name, required=True, max_length=14)
    assert value is not None
    gtin, reason = _checked_gtin(value)
    if gtin is None:
        raise _Bad(name, reason or "bad GTIN")
    return gtin


def _gln(rec: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = _text(rec, name, required=required, max_length=13)
    if value is None:
        return None
    return str(_shared(check_gln, value, field=name))


def _lot(rec: dict[str, Any]) -> str:
    value = _text(rec, "lot", required=True, max_length=20)
    assert value is not None
    try:
        return validate_lot(value)
    except ValidationError as exc:
        raise _Bad("lot", str(exc)) from None


def _date(rec: dict[str, Any], name: str) -> date | None:
    value = _text(rec, name, max_length=10)
    if value is None:
        return None
    parsed = _checked_date(value)
    if parsed is None:
        raise _Bad(name, f"{name} {value!r} is not a date (YYYY-MM-DD or YYMMDD)")
    return parsed


def _time(rec: dict[str, Any], name: str, *, required: bool = False) -> datetime | None:
    value = _text(rec, name, required=required, max_length=40)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(name, f"{name} {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise _Bad(name, f"{name} {value!r} needs a UTC offset")
    return parsed


def _number(rec: dict[str, Any], name: str, *, integer: bool, minimum: float | None = None) -> Any:
    """A number from a cell or a JSON value; a decimal comma is read as a point (`;` files)."""
    value = rec.get(name)
    if value is None:
        return None
    number: int | float
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(name, f"{name} {value!r} is not a number")
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value)):
        number = int(value)
    else:
        try:
            number = float(value.replace(",", ".")) if isinstance(value, str) else float(value)
        except ValueError:
            raise _Bad(name, f"{name} {value!r} is not a number") from None
        if not math.isfinite(number):
            raise _Bad(name, f"{name} {value!r} is not a number")
        if integer:
            if not number.is_integer():
                raise _Bad(name, f"{name} {value!r} is not a whole number")
            number = int(number)
    if minimum is not None and number < minimum:
        raise _Bad(name, f"{name} must be at least {minimum:g}")
    return number


def _budget(rec: dict[str, Any]) -> int | None:
    seconds = _number(rec, "stability_budget_s", integer=True, minimum=0)
    hours = _number(rec, "stability_budget_h", integer=False, minimum=0)
    if seconds is not None and hours is not None and int(seconds) != round(hours * 3600):
        raise _Bad("stability_budget_s", "stability_budget_s and stability_budget_h disagree")
    if seconds is None and hours is not None:
        seconds = round(hours * 3600)
    return None if seconds is None else int(seconds)


_SERIAL_SPLIT = re.compile(r"[|\s]+")


def _serials(rec: dict[str, Any]) -> list[str] | None:
    value = rec.get("serials")
    if value is None:
        return None
    if isinstance(value, list):
        items = [str(v) for v in value]
    else:
        text = str(value).strip()
        items = _SERIAL_SPLIT.split(text) if "|" in text or " " in text else [text]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        out.append(_shared(check_serial, item, field="serials"))
    return out or None


# --- rows per kind -------------------------------------------------------------------------------


def _product(rec: dict[str, Any], profiles: set[str]) -> tuple[Any, ...]:
    gtin = _gtin(rec)
    name = _text(rec, "name", required=True)
    low = _number(rec, "range_min_c", integer=False)
    high = _number(rec, "range_max_c", integer=False)
    _shared(check_labelled_range, low, high, field="range_max_c")
    profile = _text(rec, "default_profile", max_length=64)
    if profile is not None and profile not in profiles:
        raise _Bad("default_profile", f"unknown alarm profile {profile!r}")
    energy = _number(rec, "activation_energy_kj_mol", integer=False)
    _shared(check_activation_energy, energy, field="activation_energy_kj_mol")
    return (gtin, name, low, high, _budget(rec), energy, profile)


def _lot_row(rec: dict[str, Any]) -> tuple[Any, ...]:
    gtin = lot = None
    expiry = _date(rec, "expiry")
    if "gs1" in rec:
        try:
            data = parse_gs1(str(rec["gs1"]))
        except GS1Error as exc:
            raise _Bad("gs1", str(exc)) from None
        if data.gtin is None or data.lot is None:
            raise _Bad("gs1", "the GS1 data must carry a GTIN (01) and a lot (10)")
        gtin, lot = data.gtin, data.lot
        if data.expiry is not None:
            if expiry is not None and expiry != data.expiry:
                raise _Bad("expiry", "expiry differs from the GS1 data's (17)")
            expiry = data.expiry
    if "gtin" in rec:
        named = _gtin(rec)
        if gtin is not None and named != gtin:
            raise _Bad("gtin", "gtin differs from the GS1 data's (01)")
        gtin = named
    if "lot" in rec:
        named_lot = _lot(rec)
        if lot is not None and named_lot != lot:
            raise _Bad("lot", "lot differs from the GS1 data's (10)")
        lot = named_lot
    if gtin is None:
        raise _Bad("gtin", "gtin is required")
    if lot is None:
        raise _Bad("lot", "lot is required")
    quantity = _number(rec, "quantity", integer=True, minimum=0)
    return (gtin, lot, expiry, quantity, _serials(rec), _budget(rec))


def _site(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (
        _gln(rec, "gln", required=True),
        _text(rec, "name", required=True),
        _text(rec, "address", max_length=500),
    )


def _shipment(
    rec: dict[str, Any], profiles: dict[str, int]
) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    shipment_id = _text(rec, "id", required=True, max_length=64)
    assert shipment_id is not None
    if not SHIPMENT_ID_RE.match(shipment_id):
        raise _Bad("id", f"shipment id {shipment_id!r} must match [A-Za-z0-9_.:/-]{{1,64}}")
    profile = _text(rec, "profile", required=True, max_length=64)
    assert profile is not None
    if profile not in profiles:
        raise _Bad("profile", f"unknown alarm profile {profile!r}")
    mode = _shared(check_mode, _text(rec, "mode", max_length=20), field="mode")
    departure = _time(rec, "planned_departure")
    arrival = _time(rec, "planned_arrival")
    _shared(check_times, departure, arrival, field="planned_arrival")
    header = (
        shipment_id,
        _text(rec, "origin"),
        _text(rec, "destination"),
        _gln(rec, "origin_gln"),
        _gln(rec, "destination_gln"),
        profile,
        profiles[profile],
        _text(rec, "carrier"),
        mode,
        departure,
        arrival,
    )
    line = None
    if "gtin" in rec or "lot" in rec:
        line = (shipment_id, _gtin(rec), _lot(rec), _number(rec, "quantity", integer=True, minimum=0))
    elif "quantity" in rec:
        raise _Bad("quantity", "a quantity needs the line's gtin and lot")
    return header, line


def _assignment(rec: dict[str, Any]) -> tuple[Any, ...]:
    device = _text(rec, "device", required=True, max_length=64)
    assert device is not None
    try:
        validate_device_id(device)
    except ValidationError as exc:
        raise _Bad("device", str(exc)) from None
    shipment = _text(rec, "shipment", required=True, max_length=64)
    start = _time(rec, "from", required=True)
    end = _time(rec, "to")
    assert start is not None
    _shared(check_window, start, end, field="to")
    return (device, shipment, start, end)


# --- the import ------------------------------------------------------------------------------------


def run_import(
    conn: psycopg.Connection,
    *,
    org: int,
    kind: Kind | str,
    data: bytes,
    actor: str,
    dry_run: bool = False,
    progress: Progress = _no_progress,
    may_change_limits: bool = True,
) -> ImportReport:
    """Check and (unless a dry run or any row fails) commit the whole file in one transaction.

    `may_change_limits` false (a caller without QA's change_profile): a row changing a registered
    product's labelled range, stability budget, activation energy or default profile, or a
    registered lot's stability budget, fails (segregation of duties, as the single-record API)."""
    report = ImportReport(kind=Kind(kind), dry_run=dry_run, sha256=hashlib.sha256(data).hexdigest())
    progress("reading", 0, len(data))
    records = read_records(data, report)
    report.rows = len(records)
    if any(e.row == 0 for e in report.errors) or not records:
        return report  # the file itself is unusable: its rows are not checked one by one
    with conn.transaction():
        counts = _stage_and_apply(conn, org, report, records, progress, may_change_limits)
        if report.error_count or dry_run:
            raise psycopg.Rollback()  # leaves the block; nothing of this import is kept
        if report.kind is Kind.ASSIGNMENTS:  # each logger's config names the shipment it rides
            device_config.follow_assignments(
                conn, org=org, device_ids=store.newly_assigned_devices(conn), actor=actor,
                reason="assigned by a bulk import",
            )
        _tally(report, counts)
        if report.inserted or report.updated:
            report.import_id = store.record_import(
                conn,
                org=org,
                kind=report.kind.value,
                sha256=report.sha256,
                rows=report.rows,
                inserted=report.inserted,
                updated=report.updated,
                counts=counts,
                actor=actor,
            )
        report.committed = True
    if dry_run and not report.error_count:
        _tally(report, counts)
    return report


def _tally(report: ImportReport, counts: store.Counts) -> None:
    """Every table's changes, and the file's records (its kind's main tables) inserted or updated."""
    report.changes = {table: {"inserted": i, "updated": u} for table, (i, u) in counts.items()}
    main = _MAIN_TABLES[report.kind]
    report.inserted = sum(counts.get(t, (0, 0))[0] for t in main)
    report.updated = sum(counts.get(t, (0, 0))[1] for t in main)
    report.unchanged = max(report.rows - report.inserted - report.updated, 0)


_MAIN_TABLES = {
    Kind.PRODUCTS: ("products",),
    Kind.LOTS: ("lots",),
    Kind.SITES: ("sites",),
    Kind.SHIPMENTS: ("shipments", "shipment_lots"),
    Kind.ASSIGNMENTS: ("device_assignments",),
}


def _stage_and_apply(
    conn: psycopg.Connection,
    org: int,
    report: ImportReport,
    records: list[tuple[int, dict[str, Any]]],
    progress: Progress,
    may_change_limits: bool = True,
) -> store.Counts:
    kind = report.kind
    total = len(records)
    step = max(total // 100, 1000)
    staged: list[tuple[Any, ...]] = []
    lines: list[tuple[Any, ...]] = []
    keys: dict[Any, int] = {}
    custom = store.custom_profile_ids(conn, org=org) if kind in (Kind.PRODUCTS, Kind.SHIPMENTS) else {}
    profiles = {p.id: p.version for p in list_presets()} | custom
    headers: dict[str, tuple[int, tuple[Any, ...]]] = {}
    windows: list[tuple[str, datetime, datetime | None, int]] = []
    for done, (number, rec) in enumerate(records, start=1):
        if done % step == 0:
            progress("checking", done, total)
        try:
            if kind is Kind.PRODUCTS:
                row = _product(rec, set(profiles))
                key: Any = row[0]
                what = "duplicate product"
            elif kind is Kind.LOTS:
                row = _lot_row(rec)
                key, what = (row[0], row[1]), "duplicate lot"
            elif kind is Kind.SITES:
                row = _site(rec)
                key, what = row[0], "duplicate site"
            elif kind is Kind.SHIPMENTS:
                header, line = _shipment(rec, profiles)
                earlier = headers.get(header[0])
                if earlier is None:
                    headers[header[0]] = (number, header)
                    staged.append((number, *header))
                elif earlier[1] != header:
                    raise _Bad("id", f"shipment {header[0]} differs from its header in row {earlier[0]}")
                if line is not None:
                    line_key = line[:3]
                    if line_key in keys:
                        raise _Bad("lot", f"duplicate line {line[1]}/{line[2]} (row {keys[line_key]})")
                    keys[line_key] = number
                    lines.append((number, *line))
                continue
            else:
                row = _assignment(rec)
                key, what = row, "duplicate assignment"
                windows.append((row[0], row[2], row[3], number))
        except _Bad as bad:
            report.add(number, bad.field, bad.reason)
            continue
        if key in keys:
            field_name = {Kind.PRODUCTS: "gtin", Kind.LOTS: "lot", Kind.SITES: "gln"}.get(kind, "device")
            report.add(number, field_name, f"{what} (row {keys[key]})")
            continue
        keys[key] = number
        staged.append((number, *row))
    if kind is Kind.ASSIGNMENTS:
        _overlaps_in_file(windows, report)
    progress("checking", total, total)
    # The database checks run on the rows that passed, so one pass reports every error.
    progress("writing", 0, total)
    stage_name = {Kind.SHIPMENTS: "shipments"}.get(kind, kind.value)
    store.stage(conn, stage_name, staged)
    if kind is Kind.SHIPMENTS:
        store.stage(conn, "shipment_lines", lines)
    problems = {
        Kind.LOTS: store.check_lots,
        Kind.SHIPMENTS: store.check_shipments,
        Kind.ASSIGNMENTS: store.check_assignments,
    }.get(kind)
    for number, field_name, reason in problems(conn, org=org) if problems else []:
        report.add(number, field_name, reason)
    qa_only = {Kind.PRODUCTS: store.check_product_limits, Kind.LOTS: store.check_lot_budgets}.get(kind)
    if qa_only is not None and not may_change_limits:
        for number, field_name, reason in qa_only(conn, org=org):
            report.add(number, field_name, reason)
    if report.error_count:
        return {}
    apply = {
        Kind.PRODUCTS: store.apply_products,
        Kind.LOTS: store.apply_lots,
        Kind.SITES: store.apply_sites,
        Kind.SHIPMENTS: store.apply_shipments,
        Kind.ASSIGNMENTS: store.apply_assignments,
    }[kind]
    counts = apply(conn, org=org)
    progress("writing", total, total)
    return counts


def _overlaps_in_file(
    windows: list[tuple[str, datetime, datetime | None, int]], report: ImportReport
) -> None:
    """Two windows of one device in the same file may not overlap (the later row is reported)."""
    windows.sort(key=lambda w: (w[0], w[1]))
    for before, after in itertools.pairwise(windows):
        if before[0] == after[0] and (before[2] is None or before[2] > after[1]):
            row, other = max(before[3], after[3]), min(before[3], after[3])
            report.add(row, "from", f"overlapping assignment: device {after[0]} (row {other})")
