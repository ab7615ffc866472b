"""Any logger's CSV export through a saved column mapping: which columns hold time and temperature,
the time format and zone, decimal comma, °C or °F, the text encoding. Parsed as whole columns
(numpy), so a million-row export takes about a second."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from coldchain.errors import ValidationError
from coldchain.logger_file import LoggerFile, LoggerFileError

__all__ = ["ColumnMapping", "parse_csv"]

Unit = Literal["C", "F"]
_MISSING: Final = frozenset({"", "--.-", "-", "NaN", "nan", "NA", "n/a"})
# strftime directives that have a fixed width when zero-padded: such formats are cut by position.
_FIXED: Final = {"%Y": 4, "%m": 2, "%d": 2, "%H": 2, "%M": 2, "%S": 2}
_ENCODINGS: Final = frozenset({"utf-8", "utf-8-sig", "cp1252", "windows-1252", "latin-1", "iso-8859-1"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnMapping:
    """How to read one kind of CSV export; saved per organization under a name.

    `time_column`/`value_column` are header names (or 0-based indexes when `header` is False).
    `time_format` is a strftime pattern, or "iso" (RFC 3339 / ISO 8601), "epoch_s" or "epoch_ms".
    `timezone` is an IANA zone or a fixed offset like "+01:00"; times that carry their own offset
    (ISO with Z or ±hh:mm) keep it.
    """

    time_column: str | int = 0
    value_column: str | int = 1
    time_format: str = "iso"
    timezone: str = "UTC"
    delimiter: str = ","
    decimal: str = "."
    unit: Unit = "C"
    encoding: str = "utf-8"
    header: bool = True
    skip_rows: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if len(self.delimiter) != 1 or len(self.decimal) != 1:
            raise ValidationError("delimiter and decimal must be one character each", field="mapping")
        if self.decimal == self.delimiter:
            raise ValidationError("the decimal mark cannot be the delimiter", field="mapping")
        if self.unit not in ("C", "F"):
            raise ValidationError("unit must be 'C' or 'F'", field="mapping.unit")
        if self.encoding.lower() not in _ENCODINGS:
            raise ValidationError(
                f"encoding must be one of {sorted(_ENCODINGS)}", field="mapping.encoding"
            )
        if not 0 <= self.skip_rows <= 1000:
            raise ValidationError("skip_rows must be between 0 and 1000", field="mapping.skip_rows")
        _zone(self.timezone)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, raw: object) -> ColumnMapping:
        if not isinstance(raw, dict):
            raise ValidationError("a column mapping is a JSON object", field="mapping")
        unknown = set(raw) - set(cls.__slots__)
        if unknown:
            raise ValidationError(f"unknown mapping fields {sorted(unknown)}", field="mapping")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ValidationError(f"bad mapping: {exc}", field="mapping") from None


def _zone(name: str) -> ZoneInfo | timedelta:
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        return sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(f"unknown time zone {name!r}", field="mapping.timezone") from None


def _column(names: list[str], wanted: str | int, line: int) -> int:
    if isinstance(wanted, int):
        if not 0 <= wanted < len(names):
            raise LoggerFileError(f"column {wanted} does not exist ({len(names)} columns)", line=line)
        return wanted
    stripped = [n.strip().strip('"') for n in names]
    if wanted not in stripped:
        raise LoggerFileError(f"no column named {wanted!r} in the header {stripped}", line=line)
    return stripped.index(wanted)


def _fixed_slices(fmt: str) -> list[tuple[str, int, int]] | None:
    """Positions of Y/m/d/H/M/S in a fixed-width strftime format, or None if it is not one."""
    out: list[tuple[str, int, int]] = []
    pos = i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            d = fmt[i : i + 2]
            if d not in _FIXED:
                return None
            out.append((d, pos, pos + _FIXED[d]))
            pos += _FIXED[d]
            i += 2
        else:
            pos += 1
            i += 1
    return out if {d for d, _, _ in out} >= {"%Y", "%m", "%d", "%H", "%M"} else None


def _first_bad(lines: Any, values: list[str], check: Any) -> int:
    for n, v in zip(lines, values, strict=True):
        try:
            check(v)
        except (ValueError, OverflowError):
            return int(n)
    return int(lines[0]) if len(lines) else 1


def _local_to_utc(local_ms: npt.NDArray[np.int64], zone: ZoneInfo | timedelta) -> npt.NDArray[np.int64]:
    """Local wall time to UTC: the offset is looked up once per distinct local hour."""
    if isinstance(zone, timedelta):
        return local_ms - int(zone.total_seconds() * 1000)
    hours, inverse = np.unique(local_ms // 3_600_000, return_inverse=True)
    offsets = np.empty(len(hours), dtype=np.int64)
    for i, h in enumerate(hours.tolist()):
        wall = datetime(1970, 1, 1) + timedelta(hours=h)
        off = wall.replace(tzinfo=zone).utcoffset() or timedelta(0)
        offsets[i] = int(off.total_seconds() * 1000)
    return local_ms - offsets[inverse]


def _fields(
    buf: npt.NDArray[np.uint8],
    bounds: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    *,
    decimal: int | None = None,
) -> npt.NDArray[np.bytes_]:
    """Each row's field as a fixed-width bytes array (NUL-padded, which numpy ignores).

    Gathered one character position at a time (a column of n bytes per step), so memory stays at
    n x width bytes. `decimal` is a decimal-mark byte to turn into '.' on the way.
    """
    begin, end = bounds
    n = len(begin)
    lengths = end - begin
    width = max(int(lengths.max()) if n else 1, 1)
    chars = np.zeros((n, width), dtype=np.uint8)
    last = len(buf) - 1
    shortest = int(lengths.min()) if n else 0
    if shortest:  # the part inside every row's field: one gather
        small = len(buf) < (1 << 31) - width  # int32 indexes halve the gather's memory
        starts: npt.NDArray[np.signedinteger[Any]] = begin.astype(np.int32) if small else begin
        idx = starts[:, None] + np.arange(shortest, dtype=starts.dtype)
        chars[:, :shortest] = buf[idx]
    for j in range(shortest, width):
        chars[:, j] = np.where(lengths > j, buf[np.minimum(begin + j, last)], 0)
    if decimal is not None:
        chars[chars == decimal] = 46
    return chars.view(f"S{width}").ravel()


def _bounds(
    buf: npt.NDArray[np.uint8],
    row_start: npt.NDArray[np.int64],
    row_end: npt.NDArray[np.int64],
    delims: npt.NDArray[np.int64],
    column: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Start and end (exclusive) of one column in every row, blanks and quotes trimmed."""
    k = delims.shape[1]
    begin = row_start.copy() if column == 0 else delims[:, column - 1] + 1
    end = row_end.copy() if column == k else delims[:, column].copy()
    last = len(buf) - 1
    for _ in range(2):  # a space and a quote on either side
        first = buf[np.minimum(begin, last)]
        lead = (begin < end) & ((first == 32) | (first == 34))
        if lead.any():
            begin = begin + lead
        final = buf[np.maximum(end - 1, 0)]
        trail = (end > begin) & ((final == 32) | (final == 34))
        if not trail.any():
            if not lead.any():
                break
            continue
        end = end - trail
    return begin, end


_CP1252_UNDEFINED: Final = (0x81, 0x8D, 0x8F, 0x90, 0x9D)


def _check_encoding(raw: bytes, encoding: str) -> None:
    """The file must be text of its mapping's encoding; the error names the first bad line."""
    enc = encoding.lower()
    if enc in ("latin-1", "iso-8859-1"):
        return  # every byte is a Latin-1 character
    if enc in ("cp1252", "windows-1252"):
        buf = np.frombuffer(raw, dtype=np.uint8)
        bad = np.flatnonzero(np.isin(buf, _CP1252_UNDEFINED))
        if len(bad):
            line = raw[: int(bad[0])].count(b"\n") + 1
            raise LoggerFileError(f"not {encoding} text (byte 0x{buf[bad[0]]:02x})", line=line)
        return
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LoggerFileError(f"not {encoding} text ({exc.reason})", line=line) from None


def parse_csv(raw: bytes, mapping: ColumnMapping, *, model: str = "CSV export") -> LoggerFile:
    """Readings of a CSV export. Raises LoggerFileError naming the line of the first bad row.

    The rows are cut as bytes with numpy (delimiters and line ends found at once); the text is
    decoded only to check its encoding and to read the header. A quoted field may not contain the
    delimiter: such a row has too many columns and is refused with its line number.
    """
    _check_encoding(raw, mapping.encoding)
    offset = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    buf = np.frombuffer(raw, dtype=np.uint8)[offset:]
    if not len(buf) or not raw[offset:].strip():
        raise LoggerFileError("the file is empty", line=1)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1)).astype(np.int64)
    ends = np.concatenate((newlines, [len(buf)])).astype(np.int64)
    ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13))  # CRLF
    blank = ends <= starts
    nonblank = np.flatnonzero(~blank)
    if len(nonblank) == 0 or nonblank[-1] < mapping.skip_rows:
        raise LoggerFileError("the file is empty", line=1)
    n_lines = int(nonblank[-1]) + 1  # trailing blank lines dropped
    starts, ends = starts[:n_lines], ends[:n_lines]
    head_at = mapping.skip_rows
    header = bytes(buf[starts[head_at] : ends[head_at]]).decode(mapping.encoding)
    names = header.split(mapping.delimiter)
    ti = _column(names, mapping.time_column, head_at + 1)
    vi = _column(names, mapping.value_column, head_at + 1)
    first = head_at + 1 if mapping.header else head_at
    if first >= n_lines:
        raise LoggerFileError("the file has a header but no rows", line=first + 1)
    r_start, r_end = starts[first:], ends[first:]
    n = len(r_start)
    delim_at = np.flatnonzero(buf[int(r_start[0]) :] == ord(mapping.delimiter)) + int(r_start[0])
    row_of = np.searchsorted(r_start, delim_at, side="right") - 1
    inside = delim_at < r_end[row_of]
    delim_at, row_of = delim_at[inside], row_of[inside]
    counts = np.bincount(row_of, minlength=n)
    expected = len(names) - 1
    wrong = np.flatnonzero(counts != expected)
    if len(wrong):
        i = int(wrong[0])
        what = "is blank" if r_end[i] <= r_start[i] else f"has {counts[i] + 1} columns"
        raise LoggerFileError(f"the row {what}, the header has {expected + 1}", line=first + i + 1)
    delims = delim_at.reshape(n, expected) if expected else np.empty((n, 0), dtype=np.int64)
    line_no = np.arange(first + 1, first + 1 + n)
    decimal = ord(mapping.decimal) if mapping.decimal != "." else None
    values = _fields(buf, _bounds(buf, r_start, r_end, delims, vi), decimal=decimal)
    missing = np.isin(values, [m.replace(mapping.decimal, ".").encode() for m in _MISSING])
    keep = ~missing
    if not bool(keep.all()):
        values, line_no = values[keep], line_no[keep]
    try:
        c = values.astype(np.float64)
    except ValueError:
        bad = _first_bad(line_no.tolist(), [v.decode("latin-1") for v in values.tolist()], float)
        raise LoggerFileError("temperature is not a number", line=bad) from None
    if not bool(np.isfinite(c).all()):
        raise LoggerFileError(
            "temperature is not a finite number", line=int(line_no[np.flatnonzero(~np.isfinite(c))[0]])
        )
    stamps = _fields(buf, _bounds(buf, r_start, r_end, delims, ti))
    if not bool(keep.all()):
        stamps = stamps[keep]
    t = _stamp_column(stamps, line_no, mapping)
    if mapping.unit == "F":
        c = (c - 32.0) * (5.0 / 9.0)
    if len(t) > 1 and not bool((t[1:] > t[:-1]).all()):
        order = np.argsort(t, kind="stable")
        t, c, line_no = t[order], c[order], line_no[order]
        dup = np.flatnonzero(t[1:] == t[:-1])
        if len(dup):
            raise LoggerFileError("a second reading at the same time", line=int(line_no[dup[0] + 1]))
    steps = np.diff(t)
    interval = int(np.median(steps) // 1000) if len(steps) else None
    return LoggerFile(
        format="csv", model=model, serial=mapping.device, times_ms=t, celsius=c,
        missing=int(missing.sum()), interval_s=interval if interval and interval > 0 else None,
        settings={k: str(v) for k, v in mapping.to_dict().items()},
    )


def _stamp_column(
    stamps: npt.NDArray[np.bytes_], line_no: npt.NDArray[np.int64], mapping: ColumnMapping
) -> npt.NDArray[np.int64]:
    """UTC epoch ms of a column of time fields; fixed-width formats are rearranged as bytes."""
    fmt = mapping.time_format
    lines = line_no  # turned into Python ints only where an error names a line
    if fmt in ("epoch_s", "epoch_ms"):
        try:
            raw = stamps.astype(np.float64)
        except ValueError:
            texts = [s.decode("latin-1") for s in stamps.tolist()]
            raise LoggerFileError("time is not a number", line=_first_bad(lines, texts, float)) from None
        return np.rint(raw * (1000 if fmt == "epoch_s" else 1)).astype(np.int64)
    zone = _zone(mapping.timezone)
    offset_ms: npt.NDArray[np.int64] | None = None
    if fmt == "iso":
        iso, offset_ms = _iso_offsets(stamps, lines)
        if offset_ms is not None:
            zone = timedelta(0)
    else:
        iso = _fixed_to_iso(stamps, fmt, lines)
    try:
        local = iso.astype("datetime64[ms]").astype(np.int64)
    except ValueError:
        texts_l = [s.decode("latin-1") for s in iso.tolist()]
        bad = _first_bad(lines, texts_l, lambda s: np.datetime64(s, "ms"))
        raise LoggerFileError(f"time does not match {fmt!r}", line=bad) from None
    utc = _local_to_utc(local, zone)
    return utc - offset_ms if offset_ms is not None else utc


def _iso_offsets(
    stamps: npt.NDArray[np.bytes_], lines: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.int64] | None]:
    """ISO times as wall times and their own UTC offsets (ms; None: the times carry none).

    Every row must be written the way the first one is (all 'Z', all '±hh:mm', or all without).
    """
    n = len(stamps)
    if not n:
        return stamps, None
    width = stamps.dtype.itemsize
    chars = stamps.view(np.uint8).reshape(n, width)
    lengths = np.char.str_len(stamps).astype(np.int64)
    rows = np.arange(n)

    def at(back: int) -> npt.NDArray[np.uint8]:
        return chars[rows, np.maximum(lengths - back, 0)]

    zulu = np.isin(at(1), (90, 122))
    offset = np.isin(at(6), (43, 45)) & (at(3) == 58) & (lengths > 6)
    style = zulu if zulu[0] else offset if offset[0] else ~(zulu | offset)
    wrong = np.flatnonzero(~style)
    if len(wrong):
        raise LoggerFileError("time is not written like the first row's", line=int(lines[int(wrong[0])]))
    if not (zulu[0] or offset[0]):
        return stamps, None
    cut = 1 if zulu[0] else 6
    offsets = np.zeros(n, dtype=np.int64)
    if offset[0]:
        digit = chars.astype(np.int64) - 48
        hh = digit[rows, lengths - 5] * 10 + digit[rows, lengths - 4]
        mm = digit[rows, lengths - 2] * 10 + digit[rows, lengths - 1]
        offsets = np.where(at(6) == 45, -1, 1) * (hh * 3_600_000 + mm * 60_000)
    wall = chars.copy()
    for back in range(1, cut + 1):
        wall[rows, lengths - back] = 0
    return np.ascontiguousarray(wall).view(f"S{width}").ravel(), offsets


def _fixed_to_iso(
    stamps: npt.NDArray[np.bytes_], fmt: str, lines: npt.NDArray[np.int64]
) -> npt.NDArray[np.bytes_]:
    slices = _fixed_slices(fmt)
    if slices is None:  # a format that is not fixed-width: parsed row by row (slower)
        out: list[str] = []
        for n, s in zip(lines, stamps.tolist(), strict=True):
            try:
                out.append(datetime.strptime(s.decode("latin-1"), fmt).isoformat())
            except ValueError:
                raise LoggerFileError(f"time does not match {fmt!r}", line=int(n)) from None
        return np.array(out, dtype="S32")
    width = len(datetime(2000, 1, 1).strftime(fmt))
    lengths = np.char.str_len(stamps)
    bad = np.flatnonzero(lengths != width)
    if len(bad):
        raise LoggerFileError(f"time does not match {fmt!r}", line=int(lines[int(bad[0])]))
    chars = stamps.view(np.uint8).reshape(len(stamps), stamps.dtype.itemsize)
    part = {d: (a, b) for d, a, b in slices}
    layout: list[int | bytes] = []
    for d, sep in (("%Y", b"-"), ("%m", b"-"), ("%d", b"T"), ("%H", b":"), ("%M", b""), ("%S", b"")):
        if d in part:
            if d == "%S":
                layout.append(b":")
            layout.extend(range(*part[d]))
            if sep:
                layout.append(sep)
    iso = np.zeros((len(stamps), len(layout)), dtype=np.uint8)
    for j, item in enumerate(layout):
        iso[:, j] = item[0] if isinstance(item, bytes) else chars[:, item]
    digits = [j for j, item in enumerate(layout) if isinstance(item, int)]
    part_digits = iso[:, digits]
    nondigit = np.flatnonzero(((part_digits < 48) | (part_digits > 57)).any(axis=1))
    if len(nondigit):
        raise LoggerFileError(f"time does not match {fmt!r}", line=int(lines[int(nondigit[0])]))
    return np.ascontiguousarray(iso).view(f"S{len(layout)}").ravel()
