"""A logger export file into the platform: the original kept byte for byte with its hash, its
readings written through the same GroupWriter as MQTT batches, its daily summaries stored.

How a file meets the writer, and why:

* The file's readings become one batch with `seq = -file id`. Live loggers number their batches
  from 0 upwards; a negative number can never collide with theirs, and every stored reading of a
  file points back to the file it came from. The device's own sequence, clock estimate and
  last-seen time are put back afterwards: a file read-out is not live contact.
* Readings at a time already stored for the device (an overlapping file, or the same logger
  streamed live before) are left out before the writer sees them, under the device row lock, so
  overlapping files merge and the same readings are never stored twice.
* The whole file (its bytes, its readings, the device's report) commits in one transaction, or
  nothing does. A file already kept (same SHA-256 in the organization) stores nothing again.
* The MQTT past-age limit does not apply: a logger read out a year after the trip is still
  evidence. Every other reading check (range, finite values) does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from coldchain.domain import Device, DeviceAssignment, ReadingBatch
from coldchain.errors import ConflictError, ValidationError
from coldchain.logger_file import LoggerFile
from ingest.core import AcceptanceBounds, ClockTracker, Message, Prepared
from ingest.files.detect import read_logger_file
from ingest.files.generic_csv import ColumnMapping
from ingest.writer import GroupWriter
from storage import logger_files as store
from storage import registry

__all__ = ["FileImport", "device_report", "file_writer", "import_logger_file"]

_NO_PAST_LIMIT_MS = 1 << 49  # about 17,000 years: no age limit for read-out files
_KIND = {
    "fridge-tag-2": "fridge-tag-2", "fridge-tag-2l": "fridge-tag-2l",
    "fridge-tag-ul": "fridge-tag-ul", "qtag-clm": "qtag-clm", "csv": "csv-logger",
}


@dataclass(frozen=True, slots=True)
class FileImport:
    """What importing one file did. `repeated`: the same bytes were imported before (nothing new)."""

    file_id: int
    sha256: str
    logger_file: LoggerFile | None
    device_id: str
    device_key: int
    shipment_key: int | None
    readings: int
    stored: int
    duplicates: int
    missing: int
    refused: int
    repeated: bool = False
    stored_file: store.StoredFile | None = None


def file_writer(limits: AcceptanceBounds) -> GroupWriter:
    """The ingest writer with the limits for read-out files: no past-age limit, no clock
    correction (a file's times are the device's record; the upload time says nothing about them)."""
    return GroupWriter(
        limits=replace(limits, max_past_ms=_NO_PAST_LIMIT_MS),
        clock=ClockTracker(threshold_ms=1 << 60, evidence_ms=1 << 60),
    )


def device_report(lf: LoggerFile) -> dict[str, object]:
    """The device's own results, as printed (the contract's `device_report`)."""
    r = lf.results
    return {
        "mkt_c": r.mkt_c,
        "mkt_delta_h_kj_mol": r.mkt_delta_h_kj_mol,
        "min_c": r.min_c,
        "min_ms": r.min_ms,
        "max_c": r.max_c,
        "max_ms": r.max_ms,
        "mean_c": r.mean_c,
        "start_ms": r.start_ms,
        "stop_ms": r.stop_ms,
        "derived_from_days": r.derived_from_days,
        "summary_only": lf.summary_only,
        "alarm_config": [a.to_dict() for a in lf.alarms],
        "days": [
            {**d.to_dict(), "alarms": [dict(a) for a in d.alarms]} for d in lf.days
        ],
        "alarms": [e.to_dict() for e in lf.events],
        "model": lf.model,
        "serial": lf.serial,
        "interval_s": lf.interval_s,
        "settings": lf.settings,
    }


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def import_logger_file(
    conn: psycopg.Connection,
    raw: bytes,
    *,
    org: int,
    organization: str,
    actor: str,
    writer: GroupWriter,
    filename: str | None = None,
    device_id: str | None = None,
    shipment_id: str | None = None,
    mapping: ColumnMapping | None = None,
    now_ms: Callable[[], int] = _wall_ms,
) -> FileImport:
    """Import one file in the caller's transaction (open one around it: all or nothing)."""
    sha = hashlib.sha256(raw).hexdigest()
    store.lock_hash(conn, org=org, sha256=sha)
    kept = store.find_by_hash(conn, org=org, sha256=sha)
    if kept is not None:
        key = store.device_key_of(conn, org=org, device_id=kept.device_id or "")
        return FileImport(
            file_id=kept.id, sha256=sha, logger_file=None, device_id=kept.device_id or "",
            device_key=key or 0, shipment_key=None, readings=kept.readings, stored=0,
            duplicates=kept.readings, missing=kept.missing, refused=0, repeated=True,
            stored_file=kept,
        )
    lf = read_logger_file(raw, mapping=mapping, filename=filename)
    dev_id = device_id or (mapping.device if mapping else None) or lf.serial
    if not dev_id:
        raise ValidationError("the file names no device: give one", field="device")
    device_key = store.device_key_of(conn, org=org, device_id=dev_id)
    if device_key is None:
        # A logger read out for the first time is registered from its own file (audited).
        try:
            device_key = registry.create_device(
                conn, org=org, actor=actor,
                device=Device(
                    id=dev_id, kind=_KIND.get(lf.format, "logger"),
                    interval_s=min(max(lf.interval_s or 60, 1), 86_400),
                    organization=organization, name=f"{lf.model} {lf.serial or ''}".strip(),
                ),
            ).key
        except ConflictError:
            # Registered meanwhile by a concurrent import (or it belongs to another organization).
            device_key = store.device_key_of(conn, org=org, device_id=dev_id)
            if device_key is None:
                raise
    shipment_key = None
    if shipment_id is not None:
        shipment_key, _, _ = store.shipment_of(conn, org=org, shipment_id=shipment_id)
    last_seq, clock_offset, last_seen = store.claim_device(conn, device_key)
    t, c = lf.times_ms, lf.celsius
    if shipment_id is not None and len(t):
        _assign_if_unassigned(conn, org=org, shipment_id=shipment_id, device_id=dev_id,
                              device_key=device_key, first_ms=int(t[0]), last_ms=int(t[-1]),
                              actor=actor)
    fresh = np.ones(len(t), dtype=bool)
    if len(t):
        before = store.stored_times(conn, device_key, from_ms=int(t[0]), to_ms=int(t[-1]))
        if len(before):
            fresh = ~np.isin(t, before)
    file_id = store.new_file_id(conn)
    store.insert_file(conn, store.FileRow(
        id=file_id, org_id=org, sha256=sha, filename=filename, format=lf.format, model=lf.model,
        serial=lf.serial, device_key=device_key, shipment_key=shipment_key, content=raw,
        signature=lf.signature, readings=len(t), missing=lf.missing,
        first_ms=int(t[0]) if len(t) else None, last_ms=int(t[-1]) if len(t) else None,
        device_report=device_report(lf), uploaded_by=actor,
    ))
    store.insert_days(conn, file_id=file_id, org_id=org, device_key=device_key, days=[
        store.DayRow(d.day, d.min_c, d.min_ms, d.max_c, d.max_ms, d.mean_c,
                     [dict(a) for a in d.alarms], d.sensor_timeout_min, d.events)
        for d in lf.days
    ])
    stored = refused = 0
    n_new = int(fresh.sum())
    if n_new:
        received = now_ms()
        batch = ReadingBatch(
            device=dev_id, seq=-file_id, sent_ms=received, t_ms=t[fresh],
            celsius=c[fresh], rh=np.full(n_new, np.nan),
        )
        # The topic names the file, so a dead letter for a refused reading points back to it.
        message = Message(topic=f"logger-files/{file_id}", payload=b"", received_ms=received)
        result = writer.write(conn, [Prepared(message, batch)])
        stored = result.readings
        refused = n_new - stored
        store.restore_device_state(conn, device_key, last_seq=last_seq,
                                   clock_offset_ms=clock_offset, last_seen_at=last_seen)
    return FileImport(
        file_id=file_id, sha256=sha, logger_file=lf, device_id=dev_id, device_key=device_key,
        shipment_key=shipment_key, readings=len(t), stored=stored,
        duplicates=len(t) - n_new, missing=lf.missing, refused=refused,
    )


def _assign_if_unassigned(
    conn: psycopg.Connection, *, org: int, shipment_id: str, device_id: str, device_key: int,
    first_ms: int, last_ms: int, actor: str,
) -> None:
    """A file read out for a shipment ties the logger to it for the file's span, unless the logger
    is already assigned to it there (then that assignment decides the linking, as for live data).
    A logger assigned to another shipment within the span is a conflict the clerk must see."""
    assigned = store.assigned_shipments(conn, device_key, from_ms=first_ms, to_ms=last_ms)
    others = [s for s in assigned if s != shipment_id]
    if others:
        raise ConflictError(
            f"device {device_id!r} rode with shipment {others[0]!r} within the file's span;"
            f" its readings cannot be given to {shipment_id!r}"
        )
    if assigned:
        return
    start = datetime.fromtimestamp(first_ms / 1000, UTC)
    end = datetime.fromtimestamp(last_ms / 1000, UTC) + timedelta(milliseconds=1)
    registry.assign_device(
        conn, org=org, shipment_id=shipment_id, actor=actor,
        assignment=DeviceAssignment(device_id=device_id, start=start, end=end),
    )
