"""The ERP outbox in PostgreSQL: the connections an organization configures, the events owed to the
ERP (written by triggers in the transaction of the change, migration 110) and one delivery per
(event, connection) with its state, attempts and last error, and the shipment's ERP reference.

A connection's secret is stored sealed (the caller encrypts it) and no function here returns it
except `connection_secret`, which only the worker calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from coldchain.errors import ConflictError, NotFoundError
from storage.audit import record
from storage.listen import Wakeup, wake
from storage.rows import fetch_all, fetch_one

EVENT_KINDS: Final = (
    "alert.opened",
    "alert.acknowledged",
    "alert.closed",
    "excursion.closed",
    "shipment.completed",
    "recall.opened",
)
CONNECTION_KINDS: Final = ("webhook", "odoo", "erpnext")


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """A connection as the API shows it: everything but the secret."""

    org_id: int
    id: str
    kind: str
    url: str
    options: dict[str, Any]
    events: tuple[str, ...]
    enabled: bool
    created_at: datetime
    updated_at: datetime


_CONNECTION_COLUMNS: Final = "org_id, id, kind, url, options, events, enabled, created_at, updated_at"


def _public(row: ConnectionRow) -> dict[str, Any]:
    """The audit trail's form of a connection (no secret)."""
    return {
        "kind": row.kind,
        "url": row.url,
        "options": row.options,
        "events": list(row.events),
        "enabled": row.enabled,
    }


def put_connection(
    conn: psycopg.Connection,
    *,
    org: int,
    connection_id: str,
    kind: str,
    url: str,
    options: dict[str, Any],
    sealed_secret: bytes | None,
    events: list[str],
    enabled: bool,
    actor: str,
) -> ConnectionRow:
    """Create or replace a connection; a replacement without a secret keeps the stored one."""
    with conn.transaction():
        old = get_connection(conn, org=org, connection_id=connection_id, missing_ok=True)
        if old is None and sealed_secret is None:
            raise ConflictError("a new ERP connection needs its secret")
        if old is not None and old.kind != kind and sealed_secret is None:
            raise ConflictError("changing a connection's kind needs its secret again")
        row = fetch_one(
            conn,
            ConnectionRow,
            "INSERT INTO erp_connections (org_id, id, kind, url, options, secret_sealed, events, enabled)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (org_id, id) DO UPDATE SET kind = EXCLUDED.kind, url = EXCLUDED.url,"
            " options = EXCLUDED.options, secret_sealed = coalesce(%s, erp_connections.secret_sealed),"
            " events = EXCLUDED.events, enabled = EXCLUDED.enabled, updated_at = now()"
            f" RETURNING {_CONNECTION_COLUMNS}",
            (
                org,
                connection_id,
                kind,
                url,
                Jsonb(options),
                sealed_secret or b"",
                events,
                enabled,
                sealed_secret,
            ),
        )
        assert row is not None
        record(
            conn,
            org_id=org,
            actor=actor,
            action="update" if old else "create",
            entity="erp_connection",
            key=connection_id,
            old=None if old is None else _public(old),
            new=_public(row),
        )
    return row


def get_connection(
    conn: psycopg.Connection, *, org: int, connection_id: str, missing_ok: bool = False
) -> ConnectionRow | None:
    row = fetch_one(
        conn,
        ConnectionRow,
        f"SELECT {_CONNECTION_COLUMNS} FROM erp_connections WHERE org_id = %s AND id = %s",
        (org, connection_id),
    )
    if row is None and not missing_ok:
        raise NotFoundError("ERP connection", connection_id)
    return row


def list_connections(conn: psycopg.Connection, *, org: int) -> list[ConnectionRow]:
    return fetch_all(
        conn,
        ConnectionRow,
        f"SELECT {_CONNECTION_COLUMNS} FROM erp_connections WHERE org_id = %s ORDER BY id",
        (org,),
    )


def delete_connection(conn: psycopg.Connection, *, org: int, connection_id: str, actor: str) -> None:
    """Remove a connection and its deliveries (what was delivered stays in the audit trail's
    record of the connection; the ERP keeps what it received)."""
    with conn.transaction():
        old = get_connection(conn, org=org, connection_id=connection_id)
        assert old is not None
        conn.execute("DELETE FROM erp_connections WHERE org_id = %s AND id = %s", (org, connection_id))
        record(
            conn,
            org_id=org,
            actor=actor,
            action="delete",
            entity="erp_connection",
            key=connection_id,
            old=_public(old),
        )


def connection_secret(conn: psycopg.Connection, *, org: int, connection_id: str) -> bytes:
    """The sealed secret, for the worker to open."""
    row = conn.execute(
        "SELECT secret_sealed FROM erp_connections WHERE org_id = %s AND id = %s", (org, connection_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("ERP connection", connection_id)
    return bytes(row[0])


# -- shipments' ERP references -----------------------------------------------------------------------


def set_shipment_ref(
    conn: psycopg.Connection, *, org: int, shipment_id: str, erp_ref: str | None, actor: str
) -> None:
    with conn.transaction():
        row = conn.execute(
            "UPDATE shipments SET erp_ref = %s WHERE org_id = %s AND id = %s RETURNING key",
            (erp_ref, org, shipment_id),
        ).fetchone()
        if row is None:
            raise NotFoundError("shipment", shipment_id)
        record(
            conn,
            org_id=org,
            actor=actor,
            action="update",
            entity="shipment",
            key=shipment_id,
            new={"erp_ref": erp_ref},
        )


def shipment_ref(conn: psycopg.Connection, *, org: int, shipment_id: str) -> str | None:
    row = conn.execute(
        "SELECT erp_ref FROM shipments WHERE org_id = %s AND id = %s", (org, shipment_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("shipment", shipment_id)
    return None if row[0] is None else str(row[0])


# -- deliveries --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One delivery of one event to one connection, with what the worker needs to compose it."""

    id: int
    org_id: int
    organization: str
    event_id: int
    event_kind: str
    connection_id: str
    connection_kind: str
    idempotency_key: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    remote_ref: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    alert_id: int | None
    shipment_id: str | None
    shipment_ref: str | None
    evidence_id: int | None
    recall_id: int | None
    event_at: datetime


_DELIVERY_SELECT: Final = (
    "SELECT d.id, d.org_id, o.slug AS organization, d.event_id, e.kind AS event_kind, d.connection_id,"
    " c.kind AS connection_kind, d.idempotency_key, d.state, d.attempts, d.next_attempt_at,"
    " d.last_error, d.remote_ref, d.created_at, d.updated_at, d.delivered_at, e.alert_id,"
    " s.id AS shipment_id, s.erp_ref AS shipment_ref, e.evidence_id, e.recall_id,"
    " e.created_at AS event_at"
    " FROM erp_deliveries d JOIN erp_events e ON e.id = d.event_id"
    " JOIN erp_connections c ON c.org_id = d.org_id AND c.id = d.connection_id"
    " JOIN organizations o ON o.id = d.org_id"
    " LEFT JOIN shipments s ON s.key = e.shipment_key"
)


def claim_due(conn: psycopg.Connection, *, now: datetime, limit: int, lease: timedelta) -> list[DeliveryRow]:
    """Take due deliveries (pending, or sending whose lease ran out) and mark them `sending`.

    The caller commits before calling any ERP, so a crash leaves the row `sending`; it is taken
    again after `lease`, and the adapter's idempotency check keeps the ERP from getting it twice.
    """
    ids = conn.execute(
        "UPDATE erp_deliveries d SET state = 'sending', attempts = d.attempts + 1,"
        " next_attempt_at = %s, updated_at = %s"
        " FROM (SELECT x.id FROM erp_deliveries x JOIN erp_connections c"
        "       ON c.org_id = x.org_id AND c.id = x.connection_id AND c.enabled"  # a paused one waits
        "       WHERE x.state IN ('pending', 'sending') AND x.next_attempt_at <= %s"
        "       ORDER BY x.next_attempt_at, x.id LIMIT %s FOR UPDATE OF x SKIP LOCKED) due"
        " WHERE d.id = due.id RETURNING d.id",
        (now + lease, now, now, limit),
    ).fetchall()
    if not ids:
        return []
    return fetch_all(
        conn,
        DeliveryRow,
        _DELIVERY_SELECT + " WHERE d.id = ANY(%s) ORDER BY d.id",
        ([int(r[0]) for r in ids],),
    )


def renew_lease(conn: psycopg.Connection, *, delivery_id: int, attempts: int, until: datetime) -> bool:
    """Extend a claimed row's lease before its attempt starts; False when it is no longer this
    worker's (its lease ran out meanwhile and another worker took it, counting one more attempt)."""
    row = conn.execute(
        "UPDATE erp_deliveries SET next_attempt_at = %s WHERE id = %s AND state = 'sending' AND attempts = %s"
        " RETURNING id",
        (until, delivery_id, attempts),
    ).fetchone()
    return row is not None


def record_delivered(
    conn: psycopg.Connection, *, delivery_id: int, now: datetime, remote_ref: str | None
) -> None:
    conn.execute(
        "UPDATE erp_deliveries SET state = 'delivered', remote_ref = %s, delivered_at = %s, updated_at = %s,"
        " last_error = NULL WHERE id = %s AND state = 'sending'",
        (remote_ref, now, now, delivery_id),
    )


def record_failure(
    conn: psycopg.Connection,
    *,
    delivery_id: int,
    attempts: int,
    now: datetime,
    error: str,
    retry_at: datetime | None,
) -> None:
    """A failed attempt: `pending` again at `retry_at`, or `failed` for good when it is None.

    Only while the row is still this attempt's (a delivered outcome, by contrast, always counts:
    the ERP has it, whoever asked)."""
    conn.execute(
        "UPDATE erp_deliveries"
        " SET state = CASE WHEN %s::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,"
        " next_attempt_at = coalesce(%s::timestamptz, next_attempt_at), last_error = %s, updated_at = %s"
        " WHERE id = %s AND state = 'sending' AND attempts = %s",
        (retry_at, retry_at, error[:2000], now, delivery_id, attempts),
    )


def retry(conn: psycopg.Connection, *, org: int, delivery_id: int, now: datetime, actor: str) -> DeliveryRow:
    """Send a failed delivery again now (attempts start over); ConflictError unless it failed."""
    with conn.transaction():
        row = conn.execute(
            "SELECT state FROM erp_deliveries WHERE org_id = %s AND id = %s FOR UPDATE", (org, delivery_id)
        ).fetchone()
        if row is None:
            raise NotFoundError("ERP delivery", str(delivery_id))
        if row[0] != "failed":
            raise ConflictError(f"only a failed delivery can be retried (this one is {row[0]})")
        conn.execute(
            "UPDATE erp_deliveries SET state = 'pending', attempts = 0, next_attempt_at = %s, updated_at = %s"
            " WHERE id = %s",
            (now, now, delivery_id),
        )
        record(
            conn,
            org_id=org,
            actor=actor,
            action="retry",
            entity="erp_delivery",
            key=str(delivery_id),
        )
        wake(conn, Wakeup.ERP_OUTBOX)
    return get_delivery(conn, org=org, delivery_id=delivery_id)


def get_delivery(conn: psycopg.Connection, *, org: int, delivery_id: int) -> DeliveryRow:
    row = fetch_one(
        conn, DeliveryRow, _DELIVERY_SELECT + " WHERE d.org_id = %s AND d.id = %s", (org, delivery_id)
    )
    if row is None:
        raise NotFoundError("ERP delivery", str(delivery_id))
    return row


def deliveries(
    conn: psycopg.Connection,
    *,
    org: int,
    shipment_id: str | None = None,
    alert_id: int | None = None,
    recall_id: int | None = None,
    state: str | None = None,
    limit: int = 200,
) -> list[DeliveryRow]:
    """Deliveries of the organization, newest first, about one record if named."""
    return fetch_all(
        conn,
        DeliveryRow,
        _DELIVERY_SELECT + " WHERE d.org_id = %(org)s AND (%(ship)s::text IS NULL OR s.id = %(ship)s::text)"
        " AND (%(alert)s::bigint IS NULL OR e.alert_id = %(alert)s::bigint)"
        " AND (%(recall)s::bigint IS NULL OR e.recall_id = %(recall)s::bigint)"
        " AND (%(state)s::text IS NULL OR d.state = %(state)s::text)"
        " ORDER BY d.id DESC LIMIT %(limit)s",
        {
            "org": org,
            "ship": shipment_id,
            "alert": alert_id,
            "recall": recall_id,
            "state": state,
            "limit": limit,
        },
    )


def counts(conn: psycopg.Connection, *, org: int | None = None) -> dict[str, int]:
    rows = conn.execute(
        "SELECT state, count(*) FROM erp_deliveries WHERE %s::smallint IS NULL OR org_id = %s::smallint"
        " GROUP BY state",
        (org, org),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


# -- what an event is about -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceFile:
    id: int
    subject_kind: str
    subject: str
    stage: str
    file_name: str
    bundle_sha256: str
    record_sha256: str
    size_bytes: int


def evidence_file(conn: psycopg.Connection, *, evidence_id: int) -> EvidenceFile | None:
    return fetch_one(
        conn,
        EvidenceFile,
        "SELECT id, subject_kind, subject, stage, file_name, bundle_sha256, record_sha256, size_bytes"
        " FROM evidence_records WHERE id = %s",
        (evidence_id,),
    )


@dataclass(frozen=True, slots=True)
class RecallSummary:
    id: int
    reason: str
    classification: str | None
    opened_at: datetime
    opened_by: str
    lots: tuple[tuple[str, str], ...]  # (gtin, lot)


def recall_summary(conn: psycopg.Connection, *, org: int, recall_id: int) -> RecallSummary | None:
    row = conn.execute(
        "SELECT r.id, r.reason, r.classification, r.opened_at, r.opened_by,"
        " coalesce((SELECT array_agg(ARRAY[l.gtin::text, l.lot] ORDER BY l.gtin, l.lot)"
        "   FROM recall_lots l WHERE l.recall_id = r.id), '{}')"
        " FROM recalls r WHERE r.org_id = %s AND r.id = %s",
        (org, recall_id),
    ).fetchone()
    if row is None:
        return None
    return RecallSummary(
        id=int(row[0]),
        reason=row[1],
        classification=row[2],
        opened_at=row[3],
        opened_by=row[4],
        lots=tuple((str(g), str(lot)) for g, lot in (row[5] or [])),
    )
