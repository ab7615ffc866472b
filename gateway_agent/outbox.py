"""The SQLite outbox: every reading lands here first; batches are numbered here and leave only
after the broker's PUBACK.

Life of a reading::

    reading (raw row)  --seal-->  batch (device, seq, columns as blobs)  --PUBACK-->  deleted

Sealing assigns the device's next seq and moves the readings into a batch row in one
transaction, so a seq is never given twice and a reading is never in two batches. A batch row
is deleted only after its PUBACK; after a crash at any point the unacknowledged batches are sent
again, in id order, under the same seq (a repeat the platform recognises and skips).

The database runs in WAL mode with synchronous=FULL: a committed reading survives power loss.

Bounded disk (policy when full): when the readings held (raw plus batched) exceed
`max_readings`, the oldest batches that were not yet summarised are rewritten, batch by batch,
so that each `summary_bucket_s` of readings becomes one summary reading: t = first time of the
bucket, c = mean, rh = mean, extras {"summary": 1, "n", "min_c", "max_c", "t_last"}. The batch
keeps its seq. Nothing is dropped without a record; a batch never shrinks below one summary, so
the bound is reached only after years of summaries at the default settings.

Batch columns are stored as little-endian int64 (t) and float64 (c, rh; NaN = no humidity)
blobs. The agent holds them as array.array, never numpy (numpy alone would cost the edge
process ~15 MB of memory).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from coldchain.domain import ReadingBatch
from coldchain.wire import encode_binary_columns, encode_json_columns
from gateway_agent.drivers.base import Sample
from gateway_agent.errors import OutboxError

log = logging.getLogger(__name__)

_BIG_ENDIAN_HOST = sys.byteorder == "big"

SCHEMA_VERSION = 1
_STARTED = "logger_started_ms:"  # meta key prefixes, per device
_TRIP = "trip_shipment:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reading (
    id      INTEGER PRIMARY KEY,
    device  TEXT NOT NULL,
    t_ms    INTEGER NOT NULL,
    c       REAL NOT NULL,
    rh      REAL,
    extras  TEXT
);
CREATE INDEX IF NOT EXISTS reading_by_device ON reading (device, id);
CREATE TABLE IF NOT EXISTS batch (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    summarised  INTEGER NOT NULL DEFAULT 0,
    t           BLOB NOT NULL,
    c           BLOB NOT NULL,
    rh          BLOB NOT NULL,
    extras      TEXT,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS batch_by_device ON batch (device, id);
CREATE TABLE IF NOT EXISTS device_seq (
    device    TEXT PRIMARY KEY,
    next_seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A sealed batch waiting for its PUBACK; `id` orders sending across restarts."""

    id: int
    device: str
    seq: int
    created_ms: int
    t_ms: array[int]
    celsius: array[float]
    rh: array[float]
    extras: tuple[dict[str, Any] | None, ...] | None

    def __len__(self) -> int:
        return len(self.t_ms)

    def payload(self, sent_ms: int, *, form: Literal["binary", "json"] = "binary") -> bytes:
        """The wire payload, encoded without numpy (the same bytes as encode_binary/encode_json
        of `to_wire`)."""
        encode = encode_json_columns if form == "json" else encode_binary_columns
        return encode(
            device=self.device,
            seq=self.seq,
            sent_ms=sent_ms,
            t_ms=self.t_ms,
            celsius=self.celsius,
            rh=self.rh,
            extras=self.extras,
        )

    def to_wire(self, sent_ms: int) -> ReadingBatch:
        """The batch as the platform decodes it (numpy columns): for tools and tests, not the
        agent's sending path, since it imports numpy."""
        import numpy as np

        return ReadingBatch(
            device=self.device,
            seq=self.seq,
            sent_ms=sent_ms,
            t_ms=np.array(self.t_ms, dtype=np.int64),
            celsius=np.array(self.celsius, dtype=np.float64),
            rh=np.array(self.rh, dtype=np.float64),
            extras=self.extras,
        )


@dataclass(frozen=True, slots=True)
class QueueDepth:
    raw_readings: int
    batches: int
    batched_readings: int

    @property
    def readings(self) -> int:
        return self.raw_readings + self.batched_readings


class Outbox:
    """One SQLite database file; use from one thread (the agent's event loop) at a time."""

    def __init__(
        self,
        path: Path,
        *,
        max_readings: int = 1_000_000,
        summary_bucket_s: int = 900,
        read_only: bool = False,
    ) -> None:
        if max_readings < 100:
            raise OutboxError("max_readings must be at least 100")
        self.path = Path(path)
        self.max_readings = max_readings
        self.summary_bucket_s = summary_bucket_s
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=5
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from None
        self._held = self._count_held() if not read_only else 0

    # ------------------------------------------------------------------ writing

    def add(self, samples: Sequence[Sample]) -> None:
        """Store readings (one transaction: all or none)."""
        if not samples:
            return
        rows = [
            (
                s.device_id,
                s.t_ms,
                s.celsius,
                s.rh,
                orjson.dumps(s.extras).decode() if s.extras else None,
            )
            for s in samples
        ]
        first: dict[str, int] = {}
        for s in samples:
            first[s.device_id] = min(first.get(s.device_id, s.t_ms), s.t_ms)
        with self._transaction():
            self._db.executemany(
                "INSERT INTO reading (device, t_ms, c, rh, extras) VALUES (?, ?, ?, ?, ?)", rows
            )
            # When this logger started logging: kept across restarts of the agent, so that the
            # platform's start delay counts from the start, not from a restart mid-trip.
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                [(_STARTED + device, str(t)) for device, t in first.items()],
            )
        self._held += len(rows)

    def logger_started_ms(self, device: str) -> int | None:
        """When the device's logging started (its first reading since `restart_logging`)."""
        value = self.meta(_STARTED + device)
        return None if value is None else int(value)

    def note_trip(self, device: str, shipment: str) -> bool:
        """Record the shipment the platform says the device rides with; a different one than
        before is a new trip, and its next reading starts the logging again (True)."""
        with self._transaction():
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_TRIP + device,)).fetchone()
            if row is not None and row[0] == shipment:
                return False
            self._set_meta(_TRIP + device, shipment)
            if row is not None:
                self._db.execute("DELETE FROM meta WHERE key = ?", (_STARTED + device,))
            return row is not None

    def seal(
        self,
        device: str,
        *,
        batch_size: int,
        max_age_s: float,
        now_ms: int,
        seq_floor: int = 1,
        force: bool = False,
    ) -> int:
        """Form the device's full batches (and a partial one when its oldest reading is older
        than `max_age_s`, or `force`); returns how many batches were sealed."""
        count, oldest = self._db.execute(
            "SELECT count(*), min(t_ms) FROM reading WHERE device = ?", (device,)
        ).fetchone()
        if not count or (
            count < batch_size and not force and now_ms - oldest < max_age_s * 1000
        ):
            return 0  # nothing to seal: skip the write transaction (and its fsync)
        sealed = 0
        with self._transaction():
            while True:
                rows = self._db.execute(
                    "SELECT id, t_ms, c, rh, extras FROM reading WHERE device = ? "
                    "ORDER BY id LIMIT ?",
                    (device, batch_size),
                ).fetchall()
                if not rows:
                    break
                if len(rows) < batch_size:
                    too_old = now_ms - rows[0][1] >= max_age_s * 1000
                    if not (force or too_old):
                        break
                seq = self._next_seq(device, seq_floor)
                self._insert_batch(device, seq, now_ms, rows)
                self._db.execute(
                    "DELETE FROM reading WHERE device = ? AND id <= ?", (device, rows[-1][0])
                )
                sealed += 1
        if sealed:
            self.enforce_bound()
        return sealed

    def _next_seq(self, device: str, seq_floor: int) -> int:
        row = self._db.execute(
            "SELECT next_seq FROM device_seq WHERE device = ?", (device,)
        ).fetchone()
        seq = max(row[0] if row else 1, seq_floor)
        self._db.execute(
            "INSERT INTO device_seq (device, next_seq) VALUES (?, ?) "
            "ON CONFLICT (device) DO UPDATE SET next_seq = excluded.next_seq",
            (device, seq + 1),
        )
        return seq

    def _insert_batch(
        self, device: str, seq: int, now_ms: int, rows: list[tuple[Any, ...]]
    ) -> None:
        t = _pack("q", [r[1] for r in rows])
        c = _pack("d", [r[2] for r in rows])
        rh = _pack("d", [math.nan if r[3] is None else r[3] for r in rows])
        extras = None
        if any(r[4] for r in rows):
            extras = "[" + ",".join(r[4] or "null" for r in rows) + "]"
        self._db.execute(
            "INSERT INTO batch (device, seq, created_ms, n, t, c, rh, extras) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (device, seq, now_ms, len(rows), t, c, rh, extras),
        )

    # ------------------------------------------------------------------ sending

    def pending(self, device: str, *, after_id: int = 0, limit: int = 100) -> list[PendingBatch]:
        """The device's unacknowledged batches after `after_id`, oldest first."""
        rows = self._db.execute(
            "SELECT id, device, seq, created_ms, t, c, rh, extras FROM batch "
            "WHERE device = ? AND id > ? ORDER BY id LIMIT ?",
            (device, after_id, limit),
        ).fetchall()
        return [_pending(row) for row in rows]

    def acknowledge(self, batch_ids: Iterable[int], *, now_ms: int | None = None) -> None:
        """Forget batches the broker acknowledged (one transaction)."""
        ids = [(i,) for i in batch_ids]
        if not ids:
            return
        with self._transaction():
            removed = 0
            for (batch_id,) in ids:
                row = self._db.execute(
                    "DELETE FROM batch WHERE id = ? RETURNING n", (batch_id,)
                ).fetchone()
                removed += row[0] if row else 0
            if now_ms is not None:
                self._set_meta("last_contact_ms", str(now_ms))
        self._held -= removed

    # ------------------------------------------------------------------ reporting

    def depth(self, device: str | None = None) -> QueueDepth:
        where, args = ("WHERE device = ?", (device,)) if device else ("", ())
        raw = self._db.execute(f"SELECT count(*) FROM reading {where}", args).fetchone()[0]
        batches, batched = self._db.execute(
            f"SELECT count(*), coalesce(sum(n), 0) FROM batch {where}", args
        ).fetchone()
        return QueueDepth(raw_readings=raw, batches=batches, batched_readings=batched)

    def next_seq(self, device: str) -> int:
        row = self._db.execute(
            "SELECT next_seq FROM device_seq WHERE device = ?", (device,)
        ).fetchone()
        return int(row[0]) if row else 1

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction():
            self._set_meta(key, value)

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ------------------------------------------------------------------ bounded disk

    def enforce_bound(self) -> int:
        """Summarise the oldest batches while more than `max_readings` are held; returns how
        many readings were folded into summaries."""
        if self._held <= self.max_readings:
            return 0
        target = int(self.max_readings * 0.9)
        folded = 0
        bucket_s = self.summary_bucket_s
        while self._held > target:
            with self._transaction():
                rows = self._db.execute(
                    "SELECT id, device, seq, created_ms, t, c, rh, extras, summarised FROM batch "
                    "WHERE summarised < 2 AND n > 1 ORDER BY summarised, id LIMIT 50"
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    batch = _pending(row[:8])
                    # First pass: one summary per bucket; second pass: one for the whole batch.
                    span = bucket_s * 1000 if row[8] == 0 else None
                    t, c, rh, extras = _summarise(batch, span)
                    self._db.execute(
                        "UPDATE batch SET n = ?, summarised = ?, t = ?, c = ?, rh = ?, extras = ? "
                        "WHERE id = ?",
                        (
                            len(t),
                            row[8] + 1,
                            _pack("q", t),
                            _pack("d", c),
                            _pack("d", rh),
                            orjson.dumps(extras).decode(),
                            batch.id,
                        ),
                    )
                    gone = len(batch) - len(t)
                    folded += gone
                    self._held -= gone
                    if self._held <= target:
                        break
                total = int(self.meta("summarised_readings") or 0) + folded
                self._set_meta("summarised_readings", str(total))
        if folded:
            log.warning(
                "outbox over %d readings: %d oldest readings folded into summaries",
                self.max_readings,
                folded,
            )
        return folded

    def _count_held(self) -> int:
        depth = self.depth()
        return depth.readings

    # ------------------------------------------------------------------ plumbing

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def _pack(typecode: str, values: Iterable[float]) -> bytes:
    """A column as a little-endian blob ("q": int64, "d": float64), whatever the host's order."""
    column = array(typecode, values)
    if _BIG_ENDIAN_HOST:
        column.byteswap()
    return column.tobytes()


def _unpack(typecode: str, blob: bytes) -> array[Any]:
    column = array(typecode)
    column.frombytes(blob)
    if _BIG_ENDIAN_HOST:
        column.byteswap()
    return column


def _pending(row: Sequence[Any]) -> PendingBatch:
    batch_id, device, seq, created_ms, t, c, rh, extras = row
    return PendingBatch(
        id=batch_id,
        device=device,
        seq=seq,
        created_ms=created_ms,
        t_ms=_unpack("q", t),
        celsius=_unpack("d", c),
        rh=_unpack("d", rh),
        extras=tuple(orjson.loads(extras)) if extras else None,
    )


def _summarise(
    batch: PendingBatch, span_ms: int | None
) -> tuple[list[int], list[float], list[float], list[dict[str, Any]]]:
    """Fold a batch's readings into min/max/mean records per time bucket (or one per batch)."""
    old_extras = batch.extras or (None,) * len(batch)
    # A reading that is already a summary carries its own n/min/max; keep them in the fold.
    counts = [int((e or {}).get("n", 1)) for e in old_extras]
    lows = [
        float((e or {}).get("min_c", c)) for e, c in zip(old_extras, batch.celsius, strict=True)
    ]
    highs = [
        float((e or {}).get("max_c", c)) for e, c in zip(old_extras, batch.celsius, strict=True)
    ]
    lasts = [int((e or {}).get("t_last", t)) for e, t in zip(old_extras, batch.t_ms, strict=True)]
    groups: dict[int, list[int]] = {}  # bucket -> reading indexes, in reading order
    t0 = batch.t_ms[0]
    for i, t in enumerate(batch.t_ms):
        key = 0 if span_ms is None else (t - t0) // span_ms
        groups.setdefault(key, []).append(i)
    t_out: list[int] = []
    c_out: list[float] = []
    rh_out: list[float] = []
    extras: list[dict[str, Any]] = []
    for key in sorted(groups):  # buckets in time order, as before
        sel = groups[key]
        total = sum(counts[i] for i in sel)
        # Humidity is weighted by the readings each value stands for, like temperature.
        rh_sel = [i for i in sel if not math.isnan(batch.rh[i])]
        rh_total = sum(counts[i] for i in rh_sel)
        t_out.append(batch.t_ms[sel[0]])
        c_out.append(sum(batch.celsius[i] * (counts[i] / total) for i in sel))
        rh_out.append(sum(batch.rh[i] * counts[i] for i in rh_sel) / rh_total if rh_sel else math.nan)
        extras.append(
            {
                "summary": 1,
                "n": total,
                "min_c": min(lows[i] for i in sel),  # temperatures are finite (Sample checks)
                "max_c": max(highs[i] for i in sel),
                "t_last": max(lasts[i] for i in sel),
            }
        )
    return t_out, c_out, rh_out, extras
