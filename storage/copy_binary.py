"""PostgreSQL binary COPY built from numpy columns: no per-row Python on the ingest hot path.

Each row of the binary format is a 16-bit field count, then per field a 32-bit length and the
big-endian value (length -1 and no value for NULL). For fixed-width columns every row with the same
NULL pattern has the same layout, so rows are grouped by pattern and each group is one packed
structured numpy array. Row order inside a COPY carries no meaning, so groups can follow each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds

# PostgreSQL type -> big-endian numpy dtype of its binary send format
WIRE_TYPES: dict[str, str] = {
    "int2": ">i2",
    "int4": ">i4",
    "int8": ">i8",
    "float4": ">f4",
    "float8": ">f8",
    "timestamptz": ">i8",  # microseconds since 2000-01-01 UTC
    "bool": "?",
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column to copy: its PostgreSQL type, values, and where they are NULL (None: never)."""

    pg_type: str
    values: npt.NDArray[np.generic]
    nulls: npt.NDArray[np.bool_] | None = None


def encode(columns: list[Column]) -> bytes:
    """The whole COPY ... FROM STDIN (FORMAT binary) stream for these columns."""
    if not columns:
        raise ValueError("no columns")
    n = len(columns[0].values)
    if any(len(c.values) != n for c in columns):
        raise ValueError("columns differ in length")
    nullable = [i for i, c in enumerate(columns) if c.nulls is not None and c.nulls.any()]
    if not nullable:
        return HEADER + _block(columns, np.ones(n, dtype=bool), frozenset()) + TRAILER
    # A pattern id per row: bit k set when nullable column k is NULL in that row.
    pattern = np.zeros(n, dtype=np.int64)
    for bit, i in enumerate(nullable):
        nulls = columns[i].nulls
        assert nulls is not None
        pattern |= nulls.astype(np.int64) << bit
    parts = [HEADER]
    for value in np.unique(pattern):
        null_cols = frozenset(i for bit, i in enumerate(nullable) if (int(value) >> bit) & 1)
        parts.append(_block(columns, pattern == value, null_cols))
    parts.append(TRAILER)
    return b"".join(parts)


def _block(columns: list[Column], rows: npt.NDArray[np.bool_], null_cols: frozenset[int]) -> bytes:
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, col in enumerate(columns):
        fields.append((f"l{i}", ">i4"))
        if i not in null_cols:
            fields.append((f"v{i}", WIRE_TYPES[col.pg_type]))
    out = np.empty(int(rows.sum()), dtype=np.dtype(fields))  # packed: no alignment padding
    out["count"] = len(columns)
    for i, col in enumerate(columns):
        if i in null_cols:
            out[f"l{i}"] = -1
        else:
            out[f"l{i}"] = np.dtype(WIRE_TYPES[col.pg_type]).itemsize
            out[f"v{i}"] = col.values[rows] if not rows.all() else col.values
    return out.tobytes()


def epoch_ms_to_pg(t_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Unix epoch milliseconds to PostgreSQL's binary timestamptz (µs since 2000-01-01)."""
    return t_ms.astype(np.int64) * 1000 - PG_EPOCH_US
