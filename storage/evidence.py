"""Evidence in PostgreSQL: what a report covers (legs, loggers, readings with both clocks, alert
lifecycles, notifications sent) and the rows of the bundles recorded automatically."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from coldchain.errors import NotFoundError
from storage.readings import judged_extremes
from storage.series_state import logger_started_ms

_EXCURSION_KINDS = ("single", "cumulative", "rate", "humidity", "mkt", "stability_budget")


@dataclass(frozen=True, slots=True)
class LoggerOnLeg:
    """A logger's ride with a shipment: its assignment window and what the registry knows of it."""

    device_key: int
    device_id: str
    kind: str
    interval_s: int
    name: str | None
    rode_from: datetime
    rode_to: datetime | None
    last_calibration: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class LegRow:
    """One shipment as a leg of the evidence."""

    shipment_key: int
    shipment_id: str
    origin: str | None
    destination: str | None
    profile_id: str
    profile_version: int
    created_at: datetime
    loggers: tuple[LoggerOnLeg, ...]
    lots: tuple[tuple[str, str, int | None], ...]  # (gtin, lot, quantity)


@dataclass(frozen=True, slots=True)
class SeriesArrays:
    """One logger's readings on one shipment, one per instant, in time order.

    `t_ms` is the corrected time the rules judge; `device_t_ms` the logger's own clock (the
    corrected time minus the clock offset ingest measured for the reading's batch).
    """

    t_ms: npt.NDArray[np.int64]
    device_t_ms: npt.NDArray[np.int64]
    c: npt.NDArray[np.float32]
    rh: npt.NDArray[np.float32]  # NaN where not measured
    flags: npt.NDArray[np.int16]
    # (low, high) the limits judge where edge summaries are among the readings; None otherwise
    judged: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
    logger_started_ms: int | None = None  # the start the rules anchored the start delay at

    def __len__(self) -> int:
        return int(self.t_ms.size)


_PACKED = np.dtype([("t", ">i8"), ("dt", ">i8"), ("c", ">f4"), ("rh", ">f4"), ("flags", ">i2")])


def shipment_key(conn: psycopg.Connection, *, org: int, shipment_id: str) -> int:
    row = conn.execute(
        "SELECT key FROM shipments WHERE org_id = %s AND id = %s", (org, shipment_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("shipment", shipment_id)
    return int(row[0])


def legs(conn: psycopg.Connection, *, org: int, shipment_keys: list[int]) -> list[LegRow]:
    """The shipments in time order, each with its loggers and lots."""
    shipments = conn.execute(
        "SELECT key, id, origin, destination, profile_id, profile_version, created_at FROM shipments"
        " WHERE org_id = %s AND key = ANY(%s) ORDER BY created_at, key",
        (org, shipment_keys),
    ).fetchall()
    out: list[LegRow] = []
    for key, sid, origin, destination, profile_id, version, created_at in shipments:
        loggers = conn.execute(
            "SELECT d.key, d.id, d.kind, d.interval_s, d.name, lower(a.during), upper(a.during),"
            " d.status -> 'calibration'"
            " FROM device_assignments a JOIN devices d ON d.key = a.device_key"
            " WHERE a.shipment_key = %s ORDER BY lower(a.during), d.id",
            (key,),
        ).fetchall()
        lots = conn.execute(
            "SELECT gtin, lot, quantity FROM shipment_lots WHERE shipment_key = %s ORDER BY gtin, lot",
            (key,),
        ).fetchall()
        out.append(
            LegRow(
                shipment_key=int(key),
                shipment_id=sid,
                origin=origin,
                destination=destination,
                profile_id=profile_id,
                profile_version=int(version),
                created_at=created_at,
                loggers=tuple(
                    LoggerOnLeg(int(r[0]), r[1], r[2], int(r[3]), r[4], r[5], r[6], r[7]) for r in loggers
                ),
                lots=tuple((g, lot, q) for g, lot, q in lots),
            )
        )
    return out


def series(conn: psycopg.Connection, *, shipment_key: int, device_key: int) -> SeriesArrays:
    """A logger's readings on a shipment with both clocks, as one row of packed binary columns
    that numpy reads directly (a row per reading through Python would cost seconds per million).

    Readings are unique per instant (the first stored wins, as the rules read them), so the
    figures computed from these arrays equal the alerts'.
    """
    row = conn.execute(
        "SELECT string_agg(int8send(r.ms) || int8send(r.ms - coalesce(b.clock_offset_ms, 0))"
        " || float4send(r.c) || float4send(coalesce(r.rh, 'NaN'::real)) || int2send(r.flags),"
        " ''::bytea ORDER BY r.ms)"
        " FROM (SELECT DISTINCT ON (t) (extract(epoch FROM t) * 1000)::int8 AS ms, c, rh, flags, seq"
        "  FROM readings WHERE device_key = %(d)s AND shipment_key = %(s)s ORDER BY t) r"
        " LEFT JOIN batches b ON b.device_key = %(d)s AND b.seq = r.seq",
        {"d": device_key, "s": shipment_key},
    ).fetchone()
    packed = np.frombuffer(row[0] if row and row[0] else b"", dtype=_PACKED)
    t_ms = packed["t"].astype(np.int64)
    c = packed["c"].astype(np.float32)
    flags = packed["flags"].astype(np.int16)
    return SeriesArrays(
        t_ms=t_ms,
        device_t_ms=packed["dt"].astype(np.int64),
        c=c,
        rh=packed["rh"].astype(np.float32),
        flags=flags,
        judged=judged_extremes(
            conn, np.full(t_ms.size, device_key, np.int32), t_ms, c.astype(np.float64), flags
        ),
        logger_started_ms=logger_started_ms(conn, shipment_key=shipment_key, device_key=device_key),
    )



def alert_shipment(conn: psycopg.Connection, *, org: int, alert_id: int) -> int | None:
    row = conn.execute(
        "SELECT shipment_key FROM alerts WHERE org_id = %s AND id = %s", (org, alert_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("alert", str(alert_id))
    return None if row[0] is None else int(row[0])


def alert_events(conn: psycopg.Connection, *, alert_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every lifecycle transition of these alerts: who, when, what and why."""
    rows = conn.execute(
        "SELECT alert_id, at, actor, action, from_state, to_state, comment FROM alert_events"
        " WHERE alert_id = ANY(%s) ORDER BY alert_id, id",
        (alert_ids,),
    ).fetchall()
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(int(r[0]), []).append(
            {"at": r[1], "actor": r[2], "action": r[3], "from": r[4], "to": r[5], "comment": r[6]}
        )
    return out


def notifications_sent(conn: psycopg.Connection, *, alert_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Who was told of these alerts, on which channel, and what became of each message."""
    rows = conn.execute(
        "SELECT alert_id, id, tier, contact_id, channel, recipient, state, created_at, sent_at,"
        " final_at, provider_status, last_error FROM notify_outbox"
        " WHERE alert_id = ANY(%s) ORDER BY alert_id, id",
        (alert_ids,),
    ).fetchall()
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(int(r[0]), []).append(
            {
                "id": int(r[1]),
                "tier": r[2],
                "contact": r[3],
                "channel": r[4],
                "recipient": r[5],
                "state": r[6],
                "created_at": r[7],
                "sent_at": r[8],
                "final_at": r[9],
                "provider_status": r[10],
                "error": r[11],
            }
        )
    return out


# --- evidence recorded automatically --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    id: int
    subject_kind: str
    subject: str
    stage: str
    alert_id: int | None
    shipment_key: int | None
    file_name: str
    size_bytes: int
    bundle_sha256: str
    record_sha256: str
    key_id: str
    generated_at: datetime
    recorded_at: datetime


_RECORD_COLUMNS = (
    "id, subject_kind, subject, stage, alert_id, shipment_key, file_name, size_bytes, bundle_sha256,"
    " record_sha256, key_id, generated_at, recorded_at"
)


def add_record(
    conn: psycopg.Connection,
    *,
    org: int,
    subject_kind: str,
    subject: str,
    stage: str,
    alert_id: int | None,
    shipment_key: int | None,
    file_name: str,
    size_bytes: int,
    bundle_sha256: str,
    record_sha256: str,
    key_id: str,
    generated_at: datetime,
) -> EvidenceRecord | None:
    """Record a bundle; None when this subject already has one for this stage."""
    row = conn.execute(
        f"INSERT INTO evidence_records (org_id, subject_kind, subject, stage, alert_id, shipment_key,"
        " file_name, size_bytes, bundle_sha256, record_sha256, key_id, generated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT (org_id, subject_kind, subject, stage) DO NOTHING RETURNING {_RECORD_COLUMNS}",
        (org, subject_kind, subject, stage, alert_id, shipment_key, file_name, size_bytes,
         bundle_sha256, record_sha256, key_id, generated_at),
    ).fetchone()
    return None if row is None else EvidenceRecord(*row)


def records(
    conn: psycopg.Connection,
    *,
    org: int,
    alert_id: int | None = None,
    shipment_key: int | None = None,
) -> list[EvidenceRecord]:
    where, params = ["org_id = %s"], [org]
    if alert_id is not None:
        where.append("alert_id = %s")
        params.append(alert_id)
    if shipment_key is not None:
        where.append("shipment_key = %s")
        params.append(shipment_key)
    rows = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM evidence_records WHERE {' AND '.join(where)} ORDER BY id",
        params,
    ).fetchall()
    return [EvidenceRecord(*r) for r in rows]


@dataclass(frozen=True, slots=True)
class DueEvidence:
    """A bundle the platform owes: an excursion opened or closed, or a shipment completed."""

    org_id: int
    subject_kind: str
    stage: str
    alert_id: int | None
    shipment_key: int | None
    shipment_id: str | None


def due(conn: psycopg.Connection, *, limit: int = 20) -> list[DueEvidence]:
    """Excursions open without a preliminary bundle, closed ones without the final bundle, and
    shipments whose loggers have all finished riding (and whose readings the rules have all
    judged) without the shipment's bundle."""
    out: list[DueEvidence] = []
    rows = conn.execute(
        "SELECT a.org_id, a.id, CASE WHEN a.state = 'closed' THEN 'final' ELSE 'preliminary' END"
        " FROM alerts a WHERE a.kind = ANY(%s) AND a.shipment_key IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM evidence_records e WHERE e.alert_id = a.id"
        "  AND e.stage = CASE WHEN a.state = 'closed' THEN 'final' ELSE 'preliminary' END)"
        " ORDER BY a.id LIMIT %s",
        (list(_EXCURSION_KINDS), limit),
    ).fetchall()
    out.extend(DueEvidence(int(r[0]), "excursion", r[2], int(r[1]), None, None) for r in rows)
    rows = conn.execute(
        "SELECT s.org_id, s.key, s.id FROM shipments s"
        " WHERE EXISTS (SELECT 1 FROM device_assignments a WHERE a.shipment_key = s.key)"
        " AND NOT EXISTS (SELECT 1 FROM device_assignments a WHERE a.shipment_key = s.key"
        "  AND (upper_inf(a.during) OR upper(a.during) > now()))"
        " AND NOT EXISTS (SELECT 1 FROM rule_queue q WHERE q.shipment_key = s.key)"
        " AND NOT EXISTS (SELECT 1 FROM evidence_records e WHERE e.shipment_key = s.key"
        "  AND e.subject_kind = 'shipment' AND e.stage = 'completed')"
        " ORDER BY s.key LIMIT %s",
        (limit,),
    ).fetchall()
    out.extend(DueEvidence(int(r[0]), "shipment", "completed", None, int(r[1]), r[2]) for r in rows)
    return out


def lot_spent_s(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> float | None:
    """A lot's time outside its labelled range as the rules last stored it (None: not yet)."""
    row = conn.execute(
        "SELECT spent_s FROM lot_budget_state WHERE org_id = %s AND gtin = %s AND lot = %s",
        (org, gtin, lot),
    ).fetchone()
    return None if row is None else float(row[0])


def try_claim(conn: psycopg.Connection, *, item: DueEvidence) -> bool:
    """A session lock on one owed bundle, so two recorders never make the same one twice."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_claim_key(item),)
    ).fetchone()
    return bool(row and row[0])


def release_claim(conn: psycopg.Connection, *, item: DueEvidence) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (_claim_key(item),))


def _claim_key(item: DueEvidence) -> str:
    return f"evidence:{item.org_id}:{item.subject_kind}:{item.alert_id}:{item.shipment_key}:{item.stage}"


def file_recorded(conn: psycopg.Connection, *, file_name: str) -> bool:
    row = conn.execute("SELECT 1 FROM evidence_records WHERE file_name = %s", (file_name,)).fetchone()
    return row is not None
