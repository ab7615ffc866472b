"""Logger export files: the original bytes with their hash, the device's and the platform's
reports, daily summaries, saved CSV column mappings, and the reading-time lookups an import needs.
Every function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

from coldchain.errors import NotFoundError


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class FileRow:
    """A logger file as it is kept: the bytes exactly as uploaded, and what was read from them."""

    id: int
    org_id: int
    sha256: str
    filename: str | None
    format: str
    model: str
    serial: str | None
    device_key: int | None
    shipment_key: int | None
    content: bytes
    signature: dict[str, str]
    readings: int
    missing: int
    first_ms: int | None
    last_ms: int | None
    device_report: dict[str, Any]
    uploaded_by: str


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A kept file's identity and its outcome, as the API returns it."""

    id: int
    sha256: str
    format: str
    device_id: str | None
    shipment_id: str | None
    readings: int
    stored: int
    duplicates: int
    missing: int
    device_report: dict[str, Any]
    platform_report: dict[str, Any] | None
    discrepancies: list[dict[str, Any]]
    uploaded_at: datetime
    filename: str | None
    size_bytes: int


@dataclass(frozen=True, slots=True)
class DayRow:
    day: date
    min_c: float | None
    min_ms: int | None
    max_c: float | None
    max_ms: int | None
    mean_c: float | None
    alarms: list[dict[str, Any]]
    sensor_timeout_min: int | None
    events: int | None


def lock_hash(conn: psycopg.Connection, *, org: int, sha256: str) -> None:
    """Serialise imports of the same bytes (until the transaction ends), so a file uploaded twice
    at once is kept once and the second import sees the first."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (sha256, org))


def new_file_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT nextval(pg_get_serial_sequence('logger_files', 'id'))").fetchone()
    assert row is not None
    return int(row[0])


def insert_file(conn: psycopg.Connection, row: FileRow) -> None:
    conn.execute(
        "INSERT INTO logger_files (id, org_id, sha256, filename, format, model, serial, device_key,"
        " shipment_key, content, size_bytes, signature, readings, stored, duplicates, missing,"
        " first_t, last_t, device_report, uploaded_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, 0, %s, %s, %s, %s, %s)",
        (
            row.id, row.org_id, row.sha256, row.filename, row.format, row.model, row.serial,
            row.device_key, row.shipment_key, row.content, len(row.content), Jsonb(row.signature),
            row.readings, row.missing, _ts(row.first_ms), _ts(row.last_ms),
            Jsonb(row.device_report), row.uploaded_by,
        ),
    )


def update_outcome(
    conn: psycopg.Connection,
    file_id: int,
    *,
    stored: int,
    duplicates: int,
    platform_report: dict[str, Any] | None,
    discrepancies: list[dict[str, Any]],
) -> None:
    conn.execute(
        "UPDATE logger_files SET stored = %s, duplicates = %s, platform_report = %s,"
        " discrepancies = %s WHERE id = %s",
        (
            stored, duplicates, None if platform_report is None else Jsonb(platform_report),
            Jsonb(discrepancies), file_id,
        ),
    )


def insert_days(
    conn: psycopg.Connection, *, file_id: int, org_id: int, device_key: int | None, days: Sequence[DayRow]
) -> None:
    if not days:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO logger_file_days (file_id, org_id, device_key, day, min_c, min_at, max_c,"
            " max_at, mean_c, alarms, sensor_timeout_min, events)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    file_id, org_id, device_key, d.day, d.min_c, _ts(d.min_ms), d.max_c,
                    _ts(d.max_ms), d.mean_c, Jsonb(d.alarms), d.sensor_timeout_min, d.events,
                )
                for d in days
            ],
        )


_STORED_COLUMNS = (
    "f.id, f.sha256, f.format, d.id, s.id, f.readings, f.stored, f.duplicates, f.missing,"
    " f.device_report, f.platform_report, f.discrepancies, f.uploaded_at, f.filename, f.size_bytes"
)
_STORED_FROM = (
    " FROM logger_files f LEFT JOIN devices d ON d.key = f.device_key"
    " LEFT JOIN shipments s ON s.key = f.shipment_key"
)


def _stored(r: tuple[Any, ...]) -> StoredFile:
    return StoredFile(
        id=int(r[0]), sha256=r[1], format=r[2], device_id=r[3], shipment_id=r[4],
        readings=int(r[5]), stored=int(r[6]), duplicates=int(r[7]), missing=int(r[8]),
        device_report=r[9], platform_report=r[10], discrepancies=r[11], uploaded_at=r[12],
        filename=r[13], size_bytes=int(r[14]),
    )


def find_by_hash(conn: psycopg.Connection, *, org: int, sha256: str) -> StoredFile | None:
    row = conn.execute(
        f"SELECT {_STORED_COLUMNS}{_STORED_FROM} WHERE f.org_id = %s AND f.sha256 = %s",
        (org, sha256),
    ).fetchone()
    return None if row is None else _stored(row)


def get_file(conn: psycopg.Connection, *, org: int, file_id: int) -> StoredFile:
    row = conn.execute(
        f"SELECT {_STORED_COLUMNS}{_STORED_FROM} WHERE f.org_id = %s AND f.id = %s", (org, file_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("logger file", str(file_id))
    return _stored(row)


def file_content(conn: psycopg.Connection, *, org: int, file_id: int) -> tuple[bytes, str, str | None]:
    """The original bytes, their SHA-256 and the uploaded name."""
    row = conn.execute(
        "SELECT content, sha256, filename FROM logger_files WHERE org_id = %s AND id = %s",
        (org, file_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("logger file", str(file_id))
    return bytes(row[0]), row[1], row[2]


def list_files(
    conn: psycopg.Connection,
    *,
    org: int,
    device_key: int | None = None,
    shipment_key: int | None = None,
    limit: int = 100,
) -> list[StoredFile]:
    rows = conn.execute(
        f"SELECT {_STORED_COLUMNS}{_STORED_FROM} WHERE f.org_id = %s"
        " AND (%s::int IS NULL OR f.device_key = %s) AND (%s::int IS NULL OR f.shipment_key = %s)"
        " ORDER BY f.id DESC LIMIT %s",
        (org, device_key, device_key, shipment_key, shipment_key, limit),
    ).fetchall()
    return [_stored(r) for r in rows]


def days_of_file(conn: psycopg.Connection, file_id: int) -> list[DayRow]:
    rows = conn.execute(
        "SELECT day, min_c, (extract(epoch FROM min_at) * 1000)::bigint, max_c,"
        " (extract(epoch FROM max_at) * 1000)::bigint, mean_c, alarms, sensor_timeout_min, events"
        " FROM logger_file_days WHERE file_id = %s ORDER BY day",
        (file_id,),
    ).fetchall()
    return [DayRow(*r) for r in rows]


def claim_device(
    conn: psycopg.Connection, device_key: int
) -> tuple[int | None, int | None, datetime | None]:
    """Lock the device row for the rest of the transaction (one file import per device at a time,
    so the time lookup below stays true until the readings are in); returns its `last_seq`,
    `clock_offset_ms` and `last_seen_at` so that the import can put them back."""
    row = conn.execute(
        "SELECT last_seq, clock_offset_ms, last_seen_at FROM devices WHERE key = %s"
        " FOR NO KEY UPDATE",
        (device_key,),
    ).fetchone()
    if row is None:
        raise NotFoundError("device", str(device_key))
    return row[0], row[1], row[2]


def restore_device_state(
    conn: psycopg.Connection,
    device_key: int,
    *,
    last_seq: int | None,
    clock_offset_ms: int | None,
    last_seen_at: datetime | None,
) -> None:
    """Put back what the writer changed on the device row for a file batch: file batches have
    seq < 0 and lie outside a live logger's own sequence, and a read-out is not live contact."""
    conn.execute(
        "UPDATE devices SET last_seq = %s, clock_offset_ms = %s, last_seen_at = %s WHERE key = %s",
        (last_seq, clock_offset_ms, last_seen_at, device_key),
    )


def assigned_shipments(conn: psycopg.Connection, device_key: int, *, from_ms: int, to_ms: int) -> list[str]:
    """Ids of the shipments the device is assigned to at some time within [from_ms, to_ms]."""
    rows = conn.execute(
        "SELECT DISTINCT s.id FROM device_assignments a JOIN shipments s ON s.key = a.shipment_key"
        " WHERE a.device_key = %s"
        " AND a.during && tstzrange(to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), '[]')"
        " ORDER BY s.id",
        (device_key, from_ms, to_ms),
    ).fetchall()
    return [str(r[0]) for r in rows]


def stored_times(
    conn: psycopg.Connection, device_key: int, *, from_ms: int, to_ms: int
) -> npt.NDArray[np.int64]:
    """Epoch ms of the device's stored readings in [from_ms, to_ms], ascending."""
    rows = conn.execute(
        "SELECT (extract(epoch FROM t) * 1000)::bigint FROM readings WHERE device_key = %s"
        " AND t BETWEEN to_timestamp(%s / 1000.0) AND to_timestamp(%s / 1000.0) ORDER BY t",
        (device_key, from_ms, to_ms),
    ).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def save_mapping(
    conn: psycopg.Connection, *, org: int, name: str, mapping: dict[str, Any], actor: str
) -> None:
    conn.execute(
        "INSERT INTO logger_file_mappings (org_id, name, mapping, saved_by) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (org_id, name) DO UPDATE SET mapping = EXCLUDED.mapping,"
        " saved_by = EXCLUDED.saved_by, saved_at = now()",
        (org, name, Jsonb(mapping), actor),
    )


def get_mapping(conn: psycopg.Connection, *, org: int, name: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT mapping FROM logger_file_mappings WHERE org_id = %s AND name = %s", (org, name)
    ).fetchone()
    if row is None:
        raise NotFoundError("column mapping", name)
    mapping: dict[str, Any] = row[0]
    return mapping


def device_key_of(conn: psycopg.Connection, *, org: int, device_id: str) -> int | None:
    row = conn.execute(
        "SELECT key FROM devices WHERE org_id = %s AND id = %s", (org, device_id)
    ).fetchone()
    return None if row is None else int(row[0])


def shipment_of(conn: psycopg.Connection, *, org: int, shipment_id: str) -> tuple[int, str, int]:
    """(key, profile id, profile version) of a shipment."""
    row = conn.execute(
        "SELECT key, profile_id, profile_version FROM shipments WHERE org_id = %s AND id = %s",
        (org, shipment_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("shipment", shipment_id)
    return int(row[0]), str(row[1]), int(row[2])


@dataclass(frozen=True, slots=True)
class OriginalFile:
    """A kept logger file as an evidence bundle takes it: the bytes as uploaded and their hash."""

    id: int
    filename: str | None
    sha256: str
    content: bytes
    signature: dict[str, str]


def originals_for_device(
    conn: psycopg.Connection, *, org: int, device_key: int, from_ms: int, to_ms: int
) -> list[OriginalFile]:
    """The device's kept files whose readings (or, for summary-only files, whose upload) fall
    within [from_ms, to_ms], oldest first: what evidence for that span must carry."""
    rows = conn.execute(
        "SELECT id, filename, sha256, content, signature FROM logger_files"
        " WHERE org_id = %s AND device_key = %s"
        " AND coalesce(last_t, uploaded_at) >= to_timestamp(%s / 1000.0)"
        " AND coalesce(first_t, uploaded_at) <= to_timestamp(%s / 1000.0) ORDER BY id",
        (org, device_key, from_ms, to_ms),
    ).fetchall()
    return [OriginalFile(int(i), n, h, bytes(c), s) for i, n, h, c, s in rows]
