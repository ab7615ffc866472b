"""Recalls: the impact of named lots (or of a logger's window) in a few set-based queries, and
the recall record with its consignees, their actions and the response time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coldchain.errors import ConflictError, NotFoundError
from storage.audit import record
from storage.notify_outbox import wake_workers
from storage.rows import fetch_all, fetch_one

LotKey = tuple[str, str]  # (gtin, lot)


@dataclass(frozen=True, slots=True)
class LotImpact:
    gtin: str
    lot: str
    expiry: Any
    quantity: int | None
    stability_budget_s: int | None
    spent_s: float
    credited_s: float
    disposition: str = "pending"  # QA's latest decision on the lot when the impact was worked out

    @property
    def remaining_s(self) -> float | None:
        if self.stability_budget_s is None:
            return None
        return self.stability_budget_s + self.credited_s - self.spent_s


@dataclass(frozen=True, slots=True)
class ShipmentLine:
    shipment_key: int
    shipment_id: str
    origin: str | None
    destination: str | None
    destination_gln: str | None
    carrier: str | None
    mode: str | None
    gtin: str
    lot: str
    quantity: int | None


@dataclass(frozen=True, slots=True)
class Ride:
    """A logger's window on a shipment."""

    shipment_key: int
    device_id: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True, slots=True)
class Excursion:
    id: int
    shipment_key: int
    kind: str
    severity: str
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    peak_c: float | None
    disposition: str | None


@dataclass(frozen=True, slots=True)
class LegMkt:
    """A lot's leg judged by its worst logger (most time outside the labelled range, then the
    higher MKT), with that series' running MKT as the rules keep it (None: not known yet)."""

    gtin: str
    lot: str
    shipment_key: int
    device_id: str
    log_mean: float | None
    weight_ms: float | None
    delta_h_over_r_k: float | None


@dataclass(frozen=True, slots=True)
class Impact:
    lots: list[LotImpact]
    lines: list[ShipmentLine]
    rides: list[Ride]
    excursions: list[Excursion]
    legs: list[LegMkt] = field(default_factory=list)


def lots_with_device(
    conn: psycopg.Connection, *, org: int, device_id: str, start: datetime, end: datetime
) -> list[LotKey]:
    """Every lot on a shipment the logger rode with at some time in [start, end)."""
    rows = conn.execute(
        "SELECT DISTINCT sl.gtin, sl.lot FROM devices d"
        " JOIN device_assignments a ON a.device_key = d.key AND a.during && tstzrange(%s, %s, '[)')"
        " JOIN shipment_lots sl ON sl.shipment_key = a.shipment_key"
        " WHERE d.org_id = %s AND d.id = %s ORDER BY 1, 2",
        (start, end, org, device_id),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def device_known(conn: psycopg.Connection, *, org: int, device_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM devices WHERE org_id = %s AND id = %s", (org, device_id)).fetchone()
    return row is not None


def impact(conn: psycopg.Connection, *, org: int, lots: list[LotKey]) -> Impact:
    """The named lots' figures, every shipment line that carried them, the loggers on those
    shipments and their excursions. Lots not registered are left out (the caller checks)."""
    gtins, names = [g for g, _ in lots], [n for _, n in lots]
    wanted = "unnest(%(g)s::char(14)[], %(l)s::text[]) AS w(gtin, lot)"
    params = {"org": org, "g": gtins, "l": names}
    lot_rows = conn.execute(
        f"SELECT l.gtin, l.lot, l.expiry, l.quantity, l.stability_budget_s, coalesce(b.spent_s, 0),"
        " coalesce((SELECT sum(c.seconds) FROM lot_budget_credits c WHERE c.org_id = l.org_id"
        "  AND c.gtin = l.gtin AND c.lot = l.lot), 0),"
        " coalesce((SELECT d.state FROM lot_dispositions d WHERE d.org_id = l.org_id"
        "  AND d.gtin = l.gtin AND d.lot = l.lot ORDER BY d.id DESC LIMIT 1), 'pending')"
        f" FROM {wanted} JOIN lots l ON l.org_id = %(org)s AND l.gtin = w.gtin AND l.lot = w.lot"
        " LEFT JOIN lot_budget_state b ON b.org_id = l.org_id AND b.gtin = l.gtin AND b.lot = l.lot"
        " ORDER BY l.gtin, l.lot",
        params,
    ).fetchall()
    line_rows = conn.execute(
        "SELECT s.key, s.id, s.origin, s.destination, s.destination_gln, s.carrier, s.mode,"
        " sl.gtin, sl.lot, sl.quantity"
        f" FROM {wanted} JOIN shipment_lots sl ON sl.org_id = %(org)s AND sl.gtin = w.gtin AND sl.lot = w.lot"
        " JOIN shipments s ON s.key = sl.shipment_key ORDER BY s.id, sl.gtin, sl.lot",
        params,
    ).fetchall()
    keys = sorted({int(r[0]) for r in line_rows})
    ride_rows = conn.execute(
        "SELECT a.shipment_key, d.id, lower(a.during), upper(a.during) FROM device_assignments a"
        " JOIN devices d ON d.key = a.device_key WHERE a.shipment_key = ANY(%s)"
        " ORDER BY a.shipment_key, lower(a.during), d.id",
        (keys,),
    ).fetchall()
    excursion_rows = conn.execute(
        "SELECT id, shipment_key, kind, severity, state, started_at, ended_at, peak_c, disposition"
        " FROM alerts WHERE org_id = %s AND shipment_key = ANY(%s) ORDER BY shipment_key, opened_at, id",
        (org, keys),
    ).fetchall()
    # One row per lot and shipment: its worst series' MKT state, a few rows per lot, never readings.
    legs = fetch_all(
        conn,
        LegMkt,
        "SELECT DISTINCT ON (sl.gtin, sl.lot, sl.shipment_key) sl.gtin::text AS gtin, sl.lot,"
        " sl.shipment_key, d.id AS device_id, r.mkt_log_mean AS log_mean, r.mkt_w_ms AS weight_ms,"
        " r.mkt_dhr_k AS delta_h_over_r_k"
        f" FROM {wanted} JOIN shipment_lots sl ON sl.org_id = %(org)s AND sl.gtin = w.gtin AND sl.lot = w.lot"
        " JOIN rule_series_state r ON r.shipment_key = sl.shipment_key JOIN devices d ON d.key = r.device_key"
        " ORDER BY sl.gtin, sl.lot, sl.shipment_key, r.outside_s DESC, r.mkt_log_mean DESC NULLS FIRST",
        params,
    )
    return Impact(
        legs=legs,
        lots=[
            LotImpact(
                gtin=r[0],
                lot=r[1],
                expiry=r[2],
                quantity=r[3],
                stability_budget_s=None if r[4] is None else int(r[4]),
                spent_s=float(r[5]),
                credited_s=float(r[6]),
                disposition=str(r[7]),
            )
            for r in lot_rows
        ],
        lines=[ShipmentLine(int(r[0]), *r[1:]) for r in line_rows],
        rides=[Ride(int(r[0]), r[1], r[2], r[3]) for r in ride_rows],
        excursions=[Excursion(int(r[0]), int(r[1]), *r[2:]) for r in excursion_rows],
    )


@dataclass(frozen=True, slots=True)
class Consignee:
    id: int
    shipment_id: str
    consignee: str | None
    consignee_gln: str | None
    quantity: int | None
    notified_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    quarantined: int | None
    returned: int | None
    notifications: tuple[tuple[str, str], ...] = ()  # (channel, state) of each queued message


@dataclass(frozen=True, slots=True)
class RecallRecord:
    id: int
    state: str
    reason: str
    classification: str | None
    criteria: dict[str, Any]
    impact: dict[str, Any]
    opened_at: datetime
    opened_by: str
    all_acknowledged_at: datetime | None
    response_time_s: float | None
    consignees: list[Consignee]
    closed_at: datetime | None = None
    closed_by: str | None = None


def create_recall(
    conn: psycopg.Connection,
    *,
    org: int,
    reason: str,
    classification: str | None,
    criteria: dict[str, Any],
    impact_document: dict[str, Any],
    lots: list[LotKey],
    consignees: list[tuple[int, str | None, str | None, int | None]],  # shipment key, name, GLN, quantity
    actor: str,
) -> int:
    """Insert the recall, its lots and consignees, and the audit row, in the caller's transaction."""
    row = conn.execute(
        "INSERT INTO recalls (org_id, reason, classification, criteria, impact, opened_by)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (org, reason, classification, Jsonb(criteria), Jsonb(impact_document), actor),
    ).fetchone()
    assert row is not None
    recall_id = int(row[0])
    conn.execute(
        "INSERT INTO recall_lots (recall_id, org_id, gtin, lot)"
        " SELECT %s, %s, g, l FROM unnest(%s::char(14)[], %s::text[]) AS w(g, l)",
        (recall_id, org, [g for g, _ in lots], [n for _, n in lots]),
    )
    conn.execute(
        "INSERT INTO recall_consignees (recall_id, shipment_key, consignee, consignee_gln, quantity)"
        " SELECT %s, k, c, g, q"
        " FROM unnest(%s::int[], %s::text[], %s::char(13)[], %s::bigint[]) AS w(k, c, g, q)",
        (
            recall_id,
            [c[0] for c in consignees],
            [c[1] for c in consignees],
            [c[2] for c in consignees],
            [c[3] for c in consignees],
        ),
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="open",
        entity="recall",
        key=str(recall_id),
        new={
            "reason": reason,
            "classification": classification,
            "criteria": criteria,
            "lots": [f"{g}/{n}" for g, n in lots],
            "consignees": len(consignees),
        },
    )
    return recall_id


def get_recall(conn: psycopg.Connection, *, org: int, recall_id: int) -> RecallRecord:
    row = conn.execute(
        "SELECT id, state, reason, classification, criteria, impact, opened_at, opened_by,"
        " all_acknowledged_at, response_time_s, closed_at, closed_by FROM recalls"
        " WHERE org_id = %s AND id = %s",
        (org, recall_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("recall", str(recall_id))
    consignees = conn.execute(
        "SELECT c.id, s.id, c.consignee, c.consignee_gln, c.quantity, c.notified_at, c.acknowledged_at,"
        " c.acknowledged_by, c.quarantined, c.returned,"
        " coalesce((SELECT array_agg(array[o.channel, o.state] ORDER BY o.id) FROM notify_outbox o"
        "  WHERE o.recall_consignee_id = c.id), '{}')"
        " FROM recall_consignees c"
        " JOIN shipments s ON s.key = c.shipment_key WHERE c.recall_id = %s ORDER BY c.id",
        (recall_id,),
    ).fetchall()
    return RecallRecord(
        id=int(row[0]),
        state=row[1],
        reason=row[2],
        classification=row[3],
        criteria=row[4],
        impact=row[5],
        opened_at=row[6],
        opened_by=row[7],
        all_acknowledged_at=row[8],
        response_time_s=None if row[9] is None else float(row[9]),
        consignees=[
            Consignee(
                int(c[0]),
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                c[6],
                c[7],
                c[8],
                c[9],
                notifications=tuple((n[0], n[1]) for n in c[10]),
            )
            for c in consignees
        ],
        closed_at=row[10],
        closed_by=row[11],
    )


def acknowledge(
    conn: psycopg.Connection,
    *,
    org: int,
    recall_id: int,
    consignee_id: int,
    quarantined: int | None,
    returned: int | None,
    actor: str,
) -> None:
    """A consignee's acknowledgement with what it quarantined or returned; the last one stamps
    the recall's response time (opened to every consignee acknowledged)."""
    state = conn.execute(
        "SELECT state FROM recalls WHERE org_id = %s AND id = %s FOR UPDATE", (org, recall_id)
    ).fetchone()
    if state is None:
        raise NotFoundError("recall", str(recall_id))
    if state[0] == "closed":
        raise ConflictError(f"recall {recall_id} is closed")
    row = conn.execute(
        "UPDATE recall_consignees SET acknowledged_at = now(), acknowledged_by = %s,"
        " quarantined = %s, returned = %s, notified_at = coalesce(notified_at, now())"
        " WHERE recall_id = %s AND id = %s AND acknowledged_at IS NULL RETURNING id",
        (actor, quarantined, returned, recall_id, consignee_id),
    ).fetchone()
    if row is None:
        exists = conn.execute(
            "SELECT 1 FROM recall_consignees WHERE recall_id = %s AND id = %s", (recall_id, consignee_id)
        ).fetchone()
        if exists is None:
            raise NotFoundError("consignee", str(consignee_id))
        raise ConflictError(f"consignee {consignee_id} has already acknowledged recall {recall_id}")
    conn.execute(
        "UPDATE recalls SET all_acknowledged_at = now(),"
        " response_time_s = extract(epoch FROM now() - opened_at)"
        " WHERE id = %s AND all_acknowledged_at IS NULL AND NOT EXISTS"
        " (SELECT 1 FROM recall_consignees WHERE recall_id = %s AND acknowledged_at IS NULL)",
        (recall_id, recall_id),
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="acknowledge",
        entity="recall",
        key=str(recall_id),
        new={"consignee": consignee_id, "quarantined": quarantined, "returned": returned},
    )


def lots_of_alert(conn: psycopg.Connection, *, org: int, alert_id: int) -> list[LotKey]:
    """The lots on the shipment an excursion alert belongs to."""
    row = conn.execute(
        "SELECT shipment_key FROM alerts WHERE org_id = %s AND id = %s", (org, alert_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("alert", str(alert_id))
    rows = conn.execute(
        "SELECT gtin, lot FROM shipment_lots WHERE shipment_key = %s ORDER BY gtin, lot", (row[0],)
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def registered_lots(conn: psycopg.Connection, *, org: int, lots: list[LotKey]) -> set[LotKey]:
    rows = conn.execute(
        "SELECT l.gtin, l.lot FROM unnest(%s::char(14)[], %s::text[]) AS w(gtin, lot)"
        " JOIN lots l ON l.org_id = %s AND l.gtin = w.gtin AND l.lot = w.lot",
        ([g for g, _ in lots], [n for _, n in lots], org),
    ).fetchall()
    return {(str(r[0]), str(r[1])) for r in rows}


def lots_with_serials(conn: psycopg.Connection, *, org: int, gtin: str, serials: list[str]) -> list[LotKey]:
    """Lots of the GTIN whose serial list holds one of these serials (see `lots_of_serials`)."""
    found = lots_of_serials(conn, org=org, gtin=gtin, serials=serials)
    return sorted({(gtin, lot) for lots in found.values() for lot in lots})


def lots_of_serials(
    conn: psycopg.Connection, *, org: int, gtin: str, serials: list[str]
) -> dict[str, list[str]]:
    """For each serial of the GTIN, the lots whose serial list holds it, singly or in a range
    `A..B` (serials of a range compare as text of the same length, as zero-padded serials do);
    serials of no lot are absent."""
    rows = conn.execute(
        "SELECT DISTINCT q.serial, l.lot FROM lots l CROSS JOIN LATERAL unnest(l.serials) AS entry(s)"
        " JOIN unnest(%s::text[]) AS q(serial) ON q.serial = entry.s OR (position('..' IN entry.s) > 0"
        "  AND length(q.serial) = length(split_part(entry.s, '..', 1))"
        "  AND q.serial >= split_part(entry.s, '..', 1) COLLATE \"C\""
        "  AND q.serial <= split_part(entry.s, '..', 2) COLLATE \"C\")"
        " WHERE l.org_id = %s AND l.gtin = %s ORDER BY 1, 2",
        (serials, org, gtin),
    ).fetchall()
    found: dict[str, list[str]] = {}
    for serial, lot in rows:
        found.setdefault(str(serial), []).append(str(lot))
    return found


@dataclass(frozen=True, slots=True)
class RecallSummary:
    """A recall as the list shows it."""

    id: int
    state: str
    reason: str
    classification: str | None
    opened_at: datetime
    opened_by: str
    consignees: int
    acknowledged: int
    all_acknowledged_at: datetime | None
    response_time_s: float | None
    closed_at: datetime | None


def list_recalls(
    conn: psycopg.Connection, *, org: int, states: list[str] | None, limit: int, before: int | None
) -> list[RecallSummary]:
    """Newest first; `before` (an id) pages on."""
    return fetch_all(
        conn,
        RecallSummary,
        "SELECT r.id, r.state, r.reason, r.classification, r.opened_at, r.opened_by,"
        " (SELECT count(*) FROM recall_consignees c WHERE c.recall_id = r.id) AS consignees,"
        " (SELECT count(*) FROM recall_consignees c WHERE c.recall_id = r.id"
        "  AND c.acknowledged_at IS NOT NULL) AS acknowledged,"
        " r.all_acknowledged_at, r.response_time_s, r.closed_at"
        " FROM recalls r WHERE r.org_id = %s AND (%s::text[] IS NULL OR r.state = ANY(%s::text[]))"
        " AND (%s::bigint IS NULL OR r.id < %s::bigint) ORDER BY r.id DESC LIMIT %s",
        (org, states, states, before, before, limit),
    )


@dataclass(frozen=True, slots=True)
class RecallKpis:
    recalls: int
    open: int
    notifying: int
    closed: int
    answered: int  # every consignee acknowledged
    median_response_time_s: float | None
    p90_response_time_s: float | None
    max_response_time_s: float | None


def kpis(conn: psycopg.Connection, *, org: int, since: datetime | None) -> RecallKpis:
    """Counts by state and the response time's median, 90th percentile and maximum over the
    recalls whose consignees have all acknowledged, optionally of recalls opened since `since`."""
    row = fetch_one(
        conn,
        RecallKpis,
        "SELECT count(*) AS recalls, count(*) FILTER (WHERE state = 'open') AS open,"
        " count(*) FILTER (WHERE state = 'notifying') AS notifying,"
        " count(*) FILTER (WHERE state = 'closed') AS closed, count(response_time_s) AS answered,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY response_time_s) AS median_response_time_s,"
        " percentile_cont(0.9) WITHIN GROUP (ORDER BY response_time_s) AS p90_response_time_s,"
        " max(response_time_s) AS max_response_time_s"
        " FROM recalls WHERE org_id = %s AND (%s::timestamptz IS NULL OR opened_at >= %s::timestamptz)",
        (org, since, since),
    )
    assert row is not None  # an aggregate always answers one row
    return row


def lock_for_close(conn: psycopg.Connection, *, org: int, recall_id: int) -> None:
    """Lock the recall and refuse to close it twice or before every consignee has answered."""
    row = conn.execute(
        "SELECT state, all_acknowledged_at,"
        " (SELECT count(*) FROM recall_consignees c WHERE c.recall_id = r.id AND c.acknowledged_at IS NULL)"
        " FROM recalls r WHERE org_id = %s AND id = %s FOR UPDATE",
        (org, recall_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("recall", str(recall_id))
    if row[0] == "closed":
        raise ConflictError(f"recall {recall_id} is already closed")
    if int(row[2]) > 0:
        raise ConflictError(f"recall {recall_id} has {int(row[2])} consignee(s) yet to acknowledge")


def close(conn: psycopg.Connection, *, org: int, recall_id: int, actor: str, comment: str) -> None:
    """closed, with who and when, audited; the caller locked it (`lock_for_close`) and signs it
    in the same transaction."""
    conn.execute(
        "UPDATE recalls SET state = 'closed', closed_at = now(), closed_by = %s"
        " WHERE org_id = %s AND id = %s",
        (actor, org, recall_id),
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="close",
        entity="recall",
        key=str(recall_id),
        new={"state": "closed"},
        reason=comment,
    )


# -- notifying consignees -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsigneeContact:
    """A contact who speaks for a consignee: one of its `sites` is the consignee's GLN or name,
    or one of its `customers` is the consignee's name."""

    consignee_id: int
    contact_id: str
    phone: str | None
    email: str | None
    webhook_url: str | None


def consignee_contacts(conn: psycopg.Connection, *, org: int, recall_id: int) -> list[ConsigneeContact]:
    return fetch_all(
        conn,
        ConsigneeContact,
        "SELECT c.id AS consignee_id, k.id AS contact_id, k.phone, k.email, k.webhook_url"
        " FROM recall_consignees c JOIN notify_contacts k ON k.org_id = %s AND k.disabled_at IS NULL"
        "  AND (btrim(c.consignee_gln) = ANY(k.sites) OR c.consignee = ANY(k.sites)"
        "       OR c.consignee = ANY(k.customers))"
        " WHERE c.recall_id = %s ORDER BY c.id, k.id",
        (org, recall_id),
    )


def queue_notifications(
    conn: psycopg.Connection, *, org: int, recall_id: int, messages: list[tuple[int, str, str, str]]
) -> int:
    """Outbox rows (consignee id, contact id, channel, recipient), each once by its idempotency
    key, in the caller's transaction; a recall with any becomes `notifying`."""
    made = 0
    for consignee_id, contact_id, channel, recipient in messages:
        row = conn.execute(
            "INSERT INTO notify_outbox (org_id, idempotency_key, kind, recall_consignee_id, contact_id,"
            " channel, recipient, state, due_at, next_attempt_at, created_at, updated_at)"
            " VALUES (%s, %s, 'recall', %s, %s, %s, %s, 'pending', now(), now(), now(), now())"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (
                org,
                f"recall:{recall_id}:{consignee_id}:{contact_id}:{channel}",
                consignee_id,
                contact_id,
                channel,
                recipient,
            ),
        ).fetchone()
        made += row is not None
    if made:
        conn.execute(
            "UPDATE recalls SET state = 'notifying' WHERE org_id = %s AND id = %s AND state = 'open'",
            (org, recall_id),
        )
        wake_workers(conn)  # delivered on commit
    return made


@dataclass(frozen=True, slots=True)
class RecallMessage:
    """What a recall notification tells one consignee."""

    org_id: int
    recall_id: int
    consignee_id: int
    state: str
    reason: str
    classification: str | None
    opened_at: datetime
    shipment_id: str
    consignee: str | None
    lines: list[tuple[str, str, int | None]]  # (gtin, lot, quantity) the consignee received
    acknowledged_at: datetime | None


def message(conn: psycopg.Connection, *, consignee_id: int) -> RecallMessage:
    row = conn.execute(
        "SELECT r.org_id, r.id, c.id, r.state, r.reason, r.classification, r.opened_at, s.id, c.consignee,"
        " c.acknowledged_at, c.shipment_key FROM recall_consignees c JOIN recalls r ON r.id = c.recall_id"
        " JOIN shipments s ON s.key = c.shipment_key WHERE c.id = %s",
        (consignee_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError("consignee", str(consignee_id))
    lines = conn.execute(
        "SELECT sl.gtin, sl.lot, sl.quantity FROM shipment_lots sl JOIN recall_lots rl"
        " ON rl.recall_id = %s AND rl.gtin = sl.gtin AND rl.lot = sl.lot"
        " WHERE sl.shipment_key = %s ORDER BY sl.gtin, sl.lot",
        (row[1], row[10]),
    ).fetchall()
    return RecallMessage(
        org_id=int(row[0]),
        recall_id=int(row[1]),
        consignee_id=int(row[2]),
        state=row[3],
        reason=row[4],
        classification=row[5],
        opened_at=row[6],
        shipment_id=row[7],
        consignee=row[8],
        lines=[(str(r[0]), str(r[1]), None if r[2] is None else int(r[2])) for r in lines],
        acknowledged_at=row[9],
    )


def mark_notified(conn: psycopg.Connection, *, consignee_id: int, at: datetime) -> None:
    """The first message a provider accepted for the consignee stamps its `notified_at`."""
    conn.execute(
        "UPDATE recall_consignees SET notified_at = %s WHERE id = %s AND notified_at IS NULL",
        (at, consignee_id),
    )


def use_ack_nonce(conn: psycopg.Connection, *, nonce: str, consignee_id: int, contact_id: str) -> None:
    """A recall acknowledge link works once: its nonce is stored in the acknowledgement's
    transaction; ConflictError when it was used before."""
    row = conn.execute(
        "INSERT INTO recall_ack_nonces (nonce, consignee_id, contact_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
        (nonce, consignee_id, contact_id),
    ).fetchone()
    if row is None:
        raise ConflictError("this acknowledge link was already used")


def contact_speaks_for(conn: psycopg.Connection, *, consignee_id: int, contact_id: str) -> bool:
    """Whether the contact (still enabled) is one the consignee's notification went to."""
    row = conn.execute(
        "SELECT 1 FROM notify_outbox o JOIN notify_contacts k ON k.org_id = o.org_id AND k.id = o.contact_id"
        " WHERE o.recall_consignee_id = %s AND o.contact_id = %s AND k.disabled_at IS NULL LIMIT 1",
        (consignee_id, contact_id),
    ).fetchone()
    return row is not None
