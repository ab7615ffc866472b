"""The notification outbox: the truth of who was told what and when, and the acknowledge nonces.

Rows are inserted with a deterministic, unique idempotency key (ON CONFLICT DO NOTHING), claimed
with FOR UPDATE SKIP LOCKED, marked `sending` and committed before the provider is called, and
given their receipt afterwards; a row left `sending` waits until `next_attempt_at` (the grace
period) before it may be sent again. Every timestamp is passed in by the caller, so the
escalation clock can be controlled in tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, NamedTuple

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import class_row

from coldchain.domain import Severity
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from coldchain.notification import Channel, NotificationKind, NotificationState
from storage.listen import Wakeup, wake
from storage.rows import fetch_all, fetch_one

# Rows that count against a recipient's rate limit: everything handed (or about to be handed)
# to a provider.
_COUNTED: Final = ("pending", "sending", "queued", "sent", "delivered", "undelivered")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A notification to insert; `state` is pending, held (digest) or suppressed."""

    org_id: int
    idempotency_key: str
    alert_id: int | None
    channel: Channel
    recipient: str
    state: NotificationState
    due_at: datetime
    next_attempt_at: datetime
    kind: NotificationKind = NotificationKind.ESCALATION
    tier: int | None = None
    repeat_index: int | None = None
    contact_id: str | None = None
    severity: Severity | None = None
    gate_reason: str | None = None

    def __post_init__(self) -> None:
        if self.state not in ("pending", "held", "suppressed"):
            raise ValidationError(f"a new notification cannot be {self.state!r}", field="state")
        if not self.idempotency_key:
            raise ValidationError("a notification needs an idempotency key", field="idempotency_key")


def sent_keys(conn: psycopg.Connection, alert_id: int) -> set[tuple[int, int, str, str]]:
    """(tier, repeat, contact, channel) of every escalation row of the alert, whatever its state."""
    rows = conn.execute(
        "SELECT tier, repeat_index, contact_id, channel FROM notify_outbox"
        " WHERE alert_id = %s AND kind = 'escalation'",
        (alert_id,),
    ).fetchall()
    return {(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows}


def enqueue(conn: psycopg.Connection, items: Iterable[OutboxItem], *, now: datetime) -> int:
    """Insert the notifications not already there (by idempotency key); how many were new."""
    inserted = 0
    for item in items:
        row = conn.execute(
            "INSERT INTO notify_outbox (org_id, idempotency_key, kind, alert_id, tier, repeat_index,"
            " contact_id, channel, recipient, severity, state, gate_reason, due_at, next_attempt_at,"
            " created_at, updated_at, final_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s = 'suppressed' THEN %s::timestamptz END)"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (
                item.org_id,
                item.idempotency_key,
                item.kind,
                item.alert_id,
                item.tier,
                item.repeat_index,
                item.contact_id,
                item.channel,
                item.recipient,
                item.severity,
                item.state,
                item.gate_reason,
                item.due_at,
                item.next_attempt_at,
                now,
                now,
                item.state,
                now,
            ),
        ).fetchone()
        inserted += row is not None
    return inserted


class RecentSendRow(NamedTuple):
    """One message that went (or is going) to a recipient: when, for which alert (0: none), how severe."""

    created_at: datetime
    alert_id: int
    severity: str


def recent_sends(
    conn: psycopg.Connection, *, org: int, contact_id: str, channel: str, since: datetime
) -> list[RecentSendRow]:
    """What went (or is going) to the recipient since `since`, oldest first."""
    with conn.cursor(row_factory=class_row(RecentSendRow)) as cur:
        return cur.execute(
            "SELECT created_at, coalesce(alert_id, 0) AS alert_id,"
            " coalesce(severity, 'warning') AS severity FROM notify_outbox"
            " WHERE org_id = %s AND contact_id = %s AND channel = %s AND created_at > %s"
            " AND state = ANY(%s) ORDER BY created_at",
            (org, contact_id, channel, since, list(_COUNTED)),
        ).fetchall()


@dataclass(frozen=True, slots=True)
class ToldRecipient:
    """Someone an alert's escalation reached: directly, or inside a digest that went out."""

    contact_id: str
    channel: str
    recipient: str


def told_recipients(conn: psycopg.Connection, alert_id: int) -> list[ToldRecipient]:
    """Who was told of the alert (a message left: queued, sent or delivered), once each."""
    return fetch_all(
        conn,
        ToldRecipient,
        "SELECT DISTINCT o.contact_id, o.channel, o.recipient FROM notify_outbox o"
        " LEFT JOIN notify_outbox d ON d.id = o.digest_id"
        " WHERE o.alert_id = %s AND o.kind = 'escalation' AND o.contact_id IS NOT NULL"
        " AND (o.state IN ('queued', 'sent', 'delivered')"
        "      OR (o.state = 'digested' AND d.state IN ('queued', 'sent', 'delivered')))"
        " ORDER BY o.contact_id, o.channel",
        (alert_id,),
    )


def cancel_unsent(conn: psycopg.Connection, *, now: datetime, alert_id: int | None = None) -> int:
    """Cancel escalation rows not yet sent for alerts that left `open` (all, or one alert).

    A `sending` row is cancelled too: it may have gone out, but it will not be sent again.
    """
    rows = conn.execute(
        "UPDATE notify_outbox o SET state = 'cancelled', final_at = %s, updated_at = %s,"
        " last_error = CASE WHEN o.state = 'sending' THEN coalesce(o.last_error || '; ', '')"
        "   || 'unconfirmed when the alert stopped escalating' ELSE o.last_error END,"
        " gate_reason = coalesce(o.gate_reason || '; ', '') || 'alert ' || a.state"
        " FROM alerts a WHERE a.id = o.alert_id AND a.state <> 'open' AND o.kind = 'escalation'"
        " AND o.state IN ('pending', 'held', 'sending') AND (%s::bigint IS NULL OR o.alert_id = %s::bigint)"
        " RETURNING o.id",
        (now, now, alert_id, alert_id),
    ).fetchall()
    return len(rows)


def expire_unconfirmed(conn: psycopg.Connection, *, now: datetime, max_attempts: int) -> int:
    """Mark failed the `sending` rows whose grace ran out with no attempt left."""
    rows = conn.execute(
        "UPDATE notify_outbox SET state = 'failed', final_at = %s, updated_at = %s,"
        " last_error = coalesce(last_error || '; ', '')"
        "   || 'no confirmation after ' || attempts || ' attempts'"
        " WHERE state = 'sending' AND next_attempt_at <= %s AND attempts >= %s RETURNING id",
        (now, now, now, max_attempts),
    ).fetchall()
    return len(rows)


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """One outbox row as the worker and the API see it."""

    id: int
    org_id: int
    idempotency_key: str
    kind: NotificationKind
    alert_id: int | None
    tier: int | None
    repeat_index: int | None
    contact_id: str | None
    channel: Channel
    recipient: str
    severity: Severity | None
    state: NotificationState
    gate_reason: str | None
    attempts: int
    due_at: datetime
    next_attempt_at: datetime
    provider_id: str | None
    provider_status: str | None
    last_error: str | None
    digest_id: int | None
    created_at: datetime
    sent_at: datetime | None
    final_at: datetime | None
    recall_consignee_id: int | None = None


_ROW_COLUMNS: Final = (
    "id, org_id, idempotency_key, kind, alert_id, tier, repeat_index, contact_id, channel, recipient,"
    " severity, state, gate_reason, attempts, due_at, next_attempt_at, provider_id, provider_status,"
    " last_error, digest_id, created_at, sent_at, final_at, recall_consignee_id"
)


def claim_due(
    conn: psycopg.Connection, *, now: datetime, limit: int, grace: timedelta
) -> list[NotificationRow]:
    """Take due rows (pending, or sending past their grace) and mark them `sending`.

    The caller commits right after, before calling any provider: from then on a crash leaves the
    row `sending`, and it is not sent again until `grace` has passed with no status callback.
    """
    rows = fetch_all(
        conn,
        NotificationRow,
        f"UPDATE notify_outbox o SET state = 'sending', attempts = o.attempts + 1, sending_since = %s,"
        f" next_attempt_at = %s, updated_at = %s"
        f" FROM (SELECT id FROM notify_outbox WHERE state IN ('pending', 'sending')"
        f"       AND next_attempt_at <= %s ORDER BY next_attempt_at, id LIMIT %s"
        f"       FOR UPDATE SKIP LOCKED) due"
        f" WHERE o.id = due.id RETURNING {', '.join('o.' + c.strip() for c in _ROW_COLUMNS.split(','))}",
        (now, now + grace, now, now, limit),
    )
    return sorted(rows, key=lambda n: (n.next_attempt_at, n.id))


def record_outcome(
    conn: psycopg.Connection,
    *,
    row_id: int,
    state: str,
    now: datetime,
    provider_id: str | None = None,
    provider_status: str | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Store what the send produced, unless a status callback already moved the row on.

    `state` is the provider's state (queued, sent, delivered...), `failed`, `pending` (retry at
    `next_attempt_at`) or `sending` (ambiguous: wait for a callback until `next_attempt_at`).
    """
    final = state in ("delivered", "undelivered", "failed")
    row = conn.execute(
        "UPDATE notify_outbox SET state = %s, provider_id = coalesce(%s, provider_id),"
        " provider_status = coalesce(%s, provider_status), last_error = coalesce(%s, last_error),"
        " next_attempt_at = coalesce(%s, next_attempt_at), updated_at = %s,"
        " sent_at = CASE WHEN %s IN ('queued', 'sent', 'delivered') THEN coalesce(sent_at, %s::timestamptz)"
        "   ELSE sent_at END,"
        " final_at = CASE WHEN %s THEN %s::timestamptz ELSE final_at END"
        " WHERE id = %s AND state = 'sending' RETURNING id",
        (
            state,
            provider_id,
            provider_status,
            error,
            next_attempt_at,
            now,
            state,
            now,
            final,
            now,
            row_id,
        ),
    ).fetchone()
    return row is not None


_RANK: Final = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


def apply_status(
    conn: psycopg.Connection,
    *,
    idempotency_key: str | None,
    provider_id: str,
    state: str,
    provider_status: str,
    error_code: str | None,
    now: datetime,
) -> NotificationRow | None:
    """Merge a provider's status callback into its row; returns the row, or None if unknown.

    A `sending` row (crash or ambiguous failure) takes the reported state, which settles it: it
    will not be sent again. Otherwise the state only moves forward, and final states stick.
    """
    with conn.transaction():
        current = fetch_one(
            conn,
            NotificationRow,
            f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE"
            " (%s::text IS NOT NULL AND idempotency_key = %s::text)"
            " OR (%s::text IS NULL AND provider_id = %s) FOR UPDATE",
            (idempotency_key, idempotency_key, idempotency_key, provider_id),
        )
        if current is None:
            return None
        unconfirmed = current.state in ("sending", "pending")
        forward = current.state in _RANK and _RANK[current.state] < 2 and _RANK[state] >= _RANK[current.state]
        target = state if unconfirmed or forward else current.state
        final = target in ("delivered", "undelivered", "failed")
        error = f"provider error {error_code}" if error_code else None
        conn.execute(
            "UPDATE notify_outbox SET state = %s, provider_id = coalesce(provider_id, %s),"
            " provider_status = %s, last_error = coalesce(%s, last_error), updated_at = %s,"
            " sent_at = CASE WHEN %s IN ('queued', 'sent', 'delivered')"
            "   THEN coalesce(sent_at, %s::timestamptz) ELSE sent_at END,"
            " final_at = CASE WHEN %s AND final_at IS NULL THEN %s::timestamptz ELSE final_at END"
            " WHERE id = %s",
            (target, provider_id, provider_status, error, now, target, now, final, now, current.id),
        )
    return _get_row(conn, current.id)


def _get_row(conn: psycopg.Connection, row_id: int) -> NotificationRow:
    found = fetch_one(
        conn, NotificationRow, f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE id = %s", (row_id,)
    )
    if found is None:
        raise NotFoundError("notification", str(row_id))
    return found


def notifications_for_alert(conn: psycopg.Connection, *, org: int, alert_id: int) -> list[NotificationRow]:
    """Every notification about the alert, oldest first (digests it was folded into included)."""
    return fetch_all(
        conn,
        NotificationRow,
        f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE org_id = %s AND (alert_id = %s OR id IN"
        " (SELECT digest_id FROM notify_outbox WHERE alert_id = %s AND digest_id IS NOT NULL))"
        " ORDER BY id",
        (org, alert_id, alert_id),
    )


def notified_about(conn: psycopg.Connection, *, org: int, alert_id: int, contact_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM notify_outbox WHERE org_id = %s AND alert_id = %s AND contact_id = %s LIMIT 1",
        (org, alert_id, contact_id),
    ).fetchone()
    return row is not None


def digest_members(conn: psycopg.Connection, digest_id: int) -> list[NotificationRow]:
    return fetch_all(
        conn,
        NotificationRow,
        f"SELECT {_ROW_COLUMNS} FROM notify_outbox WHERE digest_id = %s ORDER BY id",
        (digest_id,),
    )


def fold_digests(conn: psycopg.Connection, *, now: datetime) -> int:
    """Fold held rows whose time has come into one digest row per recipient and channel.

    Runs in one transaction, so a crash leaves either the held rows or the digest, never both.
    Held rows of alerts no longer open are cancelled instead.
    """
    made = 0
    with conn.transaction():
        cancel_unsent(conn, now=now)
        groups = conn.execute(
            "SELECT org_id, contact_id, channel, recipient, array_agg(id ORDER BY id),"
            " max(CASE severity WHEN 'critical' THEN 3 WHEN 'alarm' THEN 2 ELSE 1 END)"
            " FROM (SELECT * FROM notify_outbox WHERE state = 'held' AND next_attempt_at <= %s"
            "       FOR UPDATE SKIP LOCKED) h GROUP BY org_id, contact_id, channel, recipient",
            (now,),
        ).fetchall()
        for org_id, contact_id, channel, recipient, ids, rank in groups:
            severity = {3: "critical", 2: "alarm", 1: "warning"}[int(rank)]
            key = f"digest:{org_id}:{contact_id}:{channel}:{ids[0]}"
            row = conn.execute(
                "INSERT INTO notify_outbox (org_id, idempotency_key, kind, contact_id, channel, recipient,"
                " severity, state, gate_reason, due_at, next_attempt_at, created_at, updated_at)"
                " VALUES (%s, %s, 'digest', %s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (org_id, key, contact_id, channel, recipient, severity, f"digest of {len(ids)}") + (now,) * 4,
            ).fetchone()
            if row is None:
                continue
            conn.execute(
                "UPDATE notify_outbox SET state = 'digested', digest_id = %s, updated_at = %s,"
                " final_at = %s WHERE id = ANY(%s)",
                (int(row[0]), now, now, list(ids)),
            )
            made += 1
    return made


def use_ack_nonce(
    conn: psycopg.Connection, *, nonce: str, alert_id: int, contact_id: str, expires_at: datetime
) -> None:
    """Record an acknowledge link's nonce as used; ConflictError if it was used before.

    Call in the acknowledgement's transaction so the two commit (or roll back) together.
    """
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO notify_ack_nonces (nonce, alert_id, contact_id, expires_at)"
                " VALUES (%s, %s, %s, %s)",
                (nonce, alert_id, contact_id, expires_at),
            )
    except pg_errors.UniqueViolation:
        raise ConflictError("this acknowledge link was already used") from None


def nonce_used(conn: psycopg.Connection, nonce: str) -> bool:
    return conn.execute("SELECT 1 FROM notify_ack_nonces WHERE nonce = %s", (nonce,)).fetchone() is not None


def outbox_counts(conn: psycopg.Connection, *, org: int | None = None) -> dict[str, int]:
    """How many rows are in each state (for tests, the benchmark and health checks)."""
    rows = conn.execute(
        "SELECT state, count(*) FROM notify_outbox WHERE %s::smallint IS NULL OR org_id = %s::smallint"
        " GROUP BY state",
        (org, org),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def wake_workers(conn: psycopg.Connection) -> None:
    """Tell outbox workers (in any process) that rows are due; delivered when the caller commits."""
    wake(conn, Wakeup.NOTIFY_OUTBOX)
