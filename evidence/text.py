"""Readings as text, a whole column at a time: RFC 3339 times and decimals written by numpy.

A million readings cannot go through Python one at a time in the time a report has, so each
field is written into a fixed-width byte matrix (one row per reading) and the unused width is
NUL. Removing every NUL byte at the end leaves compact rows. NUL never occurs in the text of a
report (PostgreSQL text cannot hold it), so the removal cannot touch real content.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["DECIMAL_WIDTH", "TIME_WIDTH", "RowLayout", "decimals", "flag", "join_rows", "rfc3339_ms"]

U8 = npt.NDArray[np.uint8]
Field = U8 | bytes  # a (n, w) block, or the same bytes on every row

TIME_WIDTH = 24  # YYYY-MM-DDTHH:MM:SS.mmmZ
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
_INT_DIGITS = 6
DECIMAL_WIDTH = 1 + _INT_DIGITS + 1 + 3  # sign, whole digits, point, three decimals


def _put(out: U8, col: int, values: npt.NDArray[np.int64], width: int) -> None:
    """Write zero-padded decimal digits of non-negative `values` into columns col..col+width."""
    v = values.copy()
    for k in range(width - 1, -1, -1):
        out[:, col + k] = _DIGITS[v % 10]
        v //= 10



_SECONDS = np.frombuffer(
    "".join(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)).encode(),
    dtype=np.uint8,
).reshape(86_400, 8)
_MILLIS = np.frombuffer("".join(f".{m:03d}" for m in range(1000)).encode(), dtype=np.uint8).reshape(1000, 4)


def _dates(days: npt.NDArray[np.int64]) -> U8:
    """`YYYY-MM-DDT` for days since 1970-01-01 (H. Hinnant's civil-from-days, vectorised)."""
    z = days + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    out = np.empty((days.size, 11), dtype=np.uint8)
    _put(out, 0, year, 4)
    out[:, 4] = ord("-")
    _put(out, 5, month, 2)
    out[:, 7] = ord("-")
    _put(out, 8, day, 2)
    out[:, 10] = ord("T")
    return out


def put_rows(dst: U8, table: U8, index: npt.NDArray[np.integer]) -> None:
    """dst[i] = table[index[i]] for rows of bytes, one memcpy per row (rows seen as `void`
    items; a byte-by-byte copy of a (n, w) gather is several times slower)."""
    w = table.shape[1]
    rows = np.ascontiguousarray(table).view(f"V{w}")[:, 0]
    dst.view(f"V{w}")[:, 0] = rows[index]


def copy_rows(dst: U8, src: U8) -> None:
    """dst[:] = src for two (n, w) byte blocks, a row at a time."""
    w = src.shape[1]
    dst.view(f"V{w}")[:, 0] = src.view(f"V{w}")[:, 0]


def rfc3339_ms(t_ms: npt.NDArray[np.int64], out: U8 | None = None) -> U8:
    """UTC times as `YYYY-MM-DDTHH:MM:SS.mmmZ`, one row of 24 bytes per time (into `out`).

    A report's readings span few days, so each distinct day is formatted once and the time of
    day comes from lookup tables.
    """
    t = np.asarray(t_ms, dtype=np.int64)
    if out is None:
        out = np.empty((t.size, TIME_WIDTH), dtype=np.uint8)
    if t.size == 0:
        return out
    days, ms = np.divmod(t, 86_400_000)
    first, last = int(days[0]), int(days[-1])
    if first <= last and last - first < 4 * t.size + 1000 and int(days.min()) == first:
        put_rows(out[:, 0:11], _dates(np.arange(first, int(days.max()) + 1, dtype=np.int64)), days - first)
    else:
        unique, which = np.unique(days, return_inverse=True)
        put_rows(out[:, 0:11], _dates(unique), which)
    secs, millis = np.divmod(ms, 1000)
    put_rows(out[:, 11:19], _SECONDS, secs)
    put_rows(out[:, 19:23], _MILLIS, millis)
    out[:, 23] = ord("Z")
    return out


_TABLE_LIMIT = 100_000  # thousandths: -100.000 .. 100.000 °C / %RH come from a lookup table
TABLE_WIDTH = 8
_table_cache: list[U8] = []


def _decimal_table() -> U8:
    """Every value from -100.000 to 100.000 in steps of 0.001, formatted once per process."""
    if not _table_cache:
        every = np.arange(-_TABLE_LIMIT, _TABLE_LIMIT + 1, dtype=np.int64)
        wide = _decimals_wide(every, np.ones(every.size, dtype=bool))
        # left-align each text (NULs last) and keep the 8 bytes "-100.000" needs: fewer NULs
        # per row to remove later
        order = np.argsort(wide == 0, axis=1, kind="stable")
        packed = np.take_along_axis(wide, order, axis=1)[:, :TABLE_WIDTH]
        _table_cache.append(np.ascontiguousarray(packed))
    return _table_cache[0]


def decimal_width(values: npt.NDArray[np.floating]) -> int:
    """The slot width `decimals` needs for these values (narrow when the table covers them)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0 or (float(v.min()) >= -_TABLE_LIMIT / 1000 and float(v.max()) <= _TABLE_LIMIT / 1000):
        return TABLE_WIDTH
    return DECIMAL_WIDTH


def decimals(
    values: npt.NDArray[np.floating], width: int = DECIMAL_WIDTH
) -> tuple[U8, npt.NDArray[np.bool_]]:
    """Numbers rounded to three decimals without trailing zeros (at least one decimal), as rows
    of `width` bytes (see `decimal_width`), and the mask of values present (NaN: empty)."""
    v = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(v)
    x = np.rint(np.where(present, v, 0.0) * 1000).astype(np.int64)
    if x.size == 0 or (int(x.min()) >= -_TABLE_LIMIT and int(x.max()) <= _TABLE_LIMIT):
        out = np.empty((x.size, TABLE_WIDTH), dtype=np.uint8)
        put_rows(out, _decimal_table(), x + _TABLE_LIMIT)
        if not present.all():
            out[~present] = 0
        if width > TABLE_WIDTH:
            out = np.concatenate([out, np.zeros((x.size, width - TABLE_WIDTH), np.uint8)], axis=1)
        return out, present
    if width < DECIMAL_WIDTH:
        raise ValueError("values beyond ±100 need the wide slot (decimal_width)")
    return _decimals_wide(x, present), present


def _decimals_wide(x: npt.NDArray[np.int64], present: npt.NDArray[np.bool_]) -> U8:
    """The same text for any magnitude, computed digit by digit (slower; rare values)."""
    places = 3
    neg = x < 0
    whole, frac = np.divmod(np.abs(x), 1000)
    out = np.zeros((x.size, DECIMAL_WIDTH), dtype=np.uint8)
    out[:, 0] = np.where(neg, ord("-"), 0)
    digits = np.empty((x.size, _INT_DIGITS), dtype=np.uint8)
    _put(digits, 0, whole, _INT_DIGITS)
    for k in range(_INT_DIGITS - 1):  # leading zeros are blank; the units digit always shows
        shown = whole >= 10 ** (_INT_DIGITS - 1 - k)
        out[:, 1 + k] = np.where(shown, digits[:, k], 0)
    out[:, _INT_DIGITS] = digits[:, -1]
    out[:, 1 + _INT_DIGITS] = ord(".")
    fd = np.empty((x.size, places), dtype=np.uint8)
    _put(fd, 0, frac, places)
    base = 2 + _INT_DIGITS
    out[:, base] = fd[:, 0]
    for k in range(1, places):
        keep = frac % (10 ** (places - k)) != 0
        out[:, base + k] = np.where(keep, fd[:, k], 0)
    out[~present] = 0
    return out


def flag(mask: npt.NDArray[np.bool_], text: bytes, otherwise: bytes = b"") -> U8:
    """`text` where the mask is set, `otherwise` (NUL-padded) elsewhere."""
    width = max(len(text), len(otherwise), 1)
    on = np.frombuffer(text.ljust(width, b"\0"), dtype=np.uint8)
    off = np.frombuffer(otherwise.ljust(width, b"\0"), dtype=np.uint8)
    return np.where(mask[:, None], on, off).astype(np.uint8)


def optional(present: npt.NDArray[np.bool_], prefix: bytes, block: U8) -> U8:
    """`prefix` + block where present, nothing elsewhere (for an optional JSON member)."""
    pre = np.broadcast_to(np.frombuffer(prefix, dtype=np.uint8), (present.size, len(prefix)))
    out = np.concatenate([pre, block], axis=1)
    out[~present] = 0
    return out


def join_rows(n: int, fields: Sequence[Field]) -> bytes:
    """The rows made of these fields side by side, NUL padding removed."""
    widths = [len(f) if isinstance(f, bytes) else f.shape[1] for f in fields]
    out = np.empty((n, sum(widths)), dtype=np.uint8)
    col = 0
    for f, w in zip(fields, widths, strict=True):
        if isinstance(f, bytes):
            out[:, col : col + w] = np.frombuffer(f, dtype=np.uint8)
        else:
            out[:, col : col + w] = f
        col += w
    # bytes.replace skips runs without NUL at memchr speed; a boolean mask is far slower here.
    return out.tobytes().replace(b"\0", b"")


class RowLayout:
    """A fixed-width row of constant text and named slots, kept in one buffer of `capacity`
    rows: constants are written once, each chunk only fills its slots, and `render` returns the
    compact text of the first `n` rows."""

    def __init__(self, parts: Sequence[bytes | tuple[str, int]], capacity: int) -> None:
        self.slots: dict[str, tuple[int, int]] = {}
        width = 0
        consts: list[tuple[int, bytes]] = []
        for part in parts:
            if isinstance(part, bytes):
                consts.append((width, part))
                width += len(part)
            else:
                name, w = part
                self.slots[name] = (width, width + w)
                width += w
        template = np.zeros(width, dtype=np.uint8)
        for at, text in consts:
            template[at : at + len(text)] = np.frombuffer(text, dtype=np.uint8)
        # one pass over the buffer (a column at a time would sweep it once per constant)
        self.buffer = np.empty((capacity, width), dtype=np.uint8)
        self.buffer.view(f"V{width}")[:, 0] = template.view(f"V{width}")[0]

    def slot(self, name: str, n: int) -> U8:
        a, b = self.slots[name]
        return self.buffer[:n, a:b]

    def render(self, n: int) -> bytes:
        # bytes.replace skips runs without NUL at memchr speed; a boolean mask is far slower.
        return self.buffer[:n].tobytes().replace(b"\0", b"")
