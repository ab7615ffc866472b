"""A lot's stability budget in PostgreSQL: the time spent outside the labelled range across every
shipment of the lot, kept current by the rules, and the time QA credited back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from coldchain.errors import ConflictError, NotFoundError, ValidationError
from storage.audit import record


@dataclass(frozen=True, slots=True)
class LotSpend:
    """A lot's spend after a refresh, and the logger that spent the most on a changed shipment."""

    org_id: int
    gtin: str
    lot: str
    budget_s: int | None
    spent_s: float
    credited_s: float
    credits: int
    shipment_key: int
    device_key: int
    last_ms: int | None

    @property
    def remaining_s(self) -> float | None:
        return None if self.budget_s is None else self.budget_s + self.credited_s - self.spent_s


def refresh(conn: psycopg.Connection, shipment_keys: list[int]) -> list[LotSpend]:
    """Recompute and store the spend of every lot on these shipments, in the caller's transaction.

    A lot's spend is, per shipment, its worst logger's time outside the labelled range, summed
    over the shipments. Lots are locked (in a fixed order) before the sum, so two workers
    evaluating two shipments of one lot cannot each miss the other's series.
    """
    wanted = conn.execute(
        "SELECT DISTINCT org_id, gtin, lot FROM shipment_lots WHERE shipment_key = ANY(%s)"
        " ORDER BY org_id, gtin, lot",
        (shipment_keys,),
    ).fetchall()
    if not wanted:
        return []
    orgs, gtins, lots = [r[0] for r in wanted], [r[1] for r in wanted], [r[2] for r in wanted]
    conn.execute(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM"
        " (SELECT 'lot:' || o || ':' || g || ':' || l AS k"
        "  FROM unnest(%s::smallint[], %s::text[], %s::text[]) AS w(o, g, l) ORDER BY o, g, l) AS x",
        (orgs, gtins, lots),
    )
    rows = conn.execute(
        "WITH wanted AS (SELECT * FROM unnest(%(o)s::smallint[], %(g)s::char(14)[], %(l)s::text[])"
        "  AS w(org_id, gtin, lot)),"
        " legs AS (SELECT sl.org_id, sl.gtin, sl.lot, sl.shipment_key, coalesce(max(r.outside_s), 0) AS worst"
        "  FROM shipment_lots sl JOIN wanted USING (org_id, gtin, lot)"
        "  LEFT JOIN rule_series_state r ON r.shipment_key = sl.shipment_key GROUP BY 1, 2, 3, 4),"
        " saved AS (INSERT INTO lot_budget_state (org_id, gtin, lot, spent_s)"
        "  SELECT org_id, gtin, lot, sum(worst) FROM legs GROUP BY 1, 2, 3"
        "  ON CONFLICT (org_id, gtin, lot) DO UPDATE SET spent_s = EXCLUDED.spent_s, updated_at = now()"
        "  RETURNING org_id, gtin, lot, spent_s),"
        " worst AS (SELECT DISTINCT ON (sl.org_id, sl.gtin, sl.lot) sl.org_id, sl.gtin, sl.lot,"
        "  r.shipment_key, r.device_key, r.last_ms"
        "  FROM shipment_lots sl JOIN wanted USING (org_id, gtin, lot)"
        "  JOIN rule_series_state r ON r.shipment_key = sl.shipment_key"
        "  WHERE sl.shipment_key = ANY(%(touched)s)"
        "  ORDER BY sl.org_id, sl.gtin, sl.lot, r.outside_s DESC, r.shipment_key DESC, r.device_key)"
        " SELECT s.org_id, s.gtin, s.lot, l.stability_budget_s, s.spent_s,"
        "  coalesce(c.seconds, 0), coalesce(c.n, 0), w.shipment_key, w.device_key, w.last_ms"
        " FROM saved s JOIN lots l USING (org_id, gtin, lot) JOIN worst w USING (org_id, gtin, lot)"
        " LEFT JOIN (SELECT org_id, gtin, lot, sum(seconds) AS seconds, count(*) AS n FROM lot_budget_credits"
        "  GROUP BY 1, 2, 3) c USING (org_id, gtin, lot)"
        " ORDER BY s.org_id, s.gtin, s.lot",
        {"o": orgs, "g": gtins, "l": lots, "touched": shipment_keys},
    ).fetchall()
    return [
        LotSpend(
            org_id=int(r[0]),
            gtin=r[1],
            lot=r[2],
            budget_s=None if r[3] is None else int(r[3]),
            spent_s=float(r[4]),
            credited_s=float(r[5]),
            credits=int(r[6]),
            shipment_key=int(r[7]),
            device_key=int(r[8]),
            last_ms=None if r[9] is None else int(r[9]),
        )
        for r in rows
    ]


def credits(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> list[dict[str, Any]]:
    """The time QA credited back to a lot, oldest first."""
    rows = conn.execute(
        "SELECT id, seconds, reason, alert_id, credited_by, credited_at FROM lot_budget_credits"
        " WHERE org_id = %s AND gtin = %s AND lot = %s ORDER BY id",
        (org, gtin, lot),
    ).fetchall()
    return [_credit_doc(*r) for r in rows]


def add_credit(
    conn: psycopg.Connection,
    *,
    org: int,
    gtin: str,
    lot: str,
    seconds: float,
    reason: str,
    actor: str,
    spent_s: float,
    alert_id: int | None = None,
) -> dict[str, Any]:
    """Credit time back to a lot's budget (QA's decision, with a reason; audited). The answer
    carries the credit and `credited_s`, all credits of the lot together.

    All credits together may not exceed `spent_s`, the time the lot has spent outside its
    labelled range: a credit gives back time that was spent, it does not extend the budget.
    An excursion named by `alert_id` must belong to one of the lot's shipments.
    """
    if not reason.strip():
        raise ValidationError("a credit needs a reason", field="reason")
    if not seconds > 0:
        raise ValidationError("seconds must be positive", field="seconds")
    row = conn.execute(
        "SELECT stability_budget_s FROM lots WHERE org_id = %s AND gtin = %s AND lot = %s FOR UPDATE",
        (org, gtin, lot),
    ).fetchone()
    if row is None:
        raise NotFoundError("lot", f"{gtin}/{lot}")
    if row[0] is None:
        raise ConflictError(f"lot {gtin}/{lot} has no stability budget to credit")
    if (
        alert_id is not None
        and not conn.execute(
            "SELECT 1 FROM alerts a JOIN shipment_lots sl ON sl.shipment_key = a.shipment_key"
            " WHERE a.id = %s AND a.org_id = %s AND sl.org_id = %s AND sl.gtin = %s AND sl.lot = %s",
            (alert_id, org, org, gtin, lot),
        ).fetchone()
    ):
        raise ValidationError(f"alert {alert_id} is not an excursion of lot {gtin}/{lot}", field="alert_id")
    done = conn.execute(
        "SELECT coalesce(sum(seconds), 0) FROM lot_budget_credits"
        " WHERE org_id = %s AND gtin = %s AND lot = %s",
        (org, gtin, lot),
    ).fetchone()
    already = float(done[0]) if done else 0.0
    if already + seconds > spent_s + 1e-6:
        raise ValidationError(
            f"credits would reach {already + seconds:.0f} s but the lot spent {spent_s:.0f} s"
            " outside its labelled range",
            field="seconds",
        )
    inserted = conn.execute(
        "INSERT INTO lot_budget_credits (org_id, gtin, lot, seconds, reason, alert_id, credited_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, credited_at",
        (org, gtin, lot, seconds, reason.strip(), alert_id, actor),
    ).fetchone()
    assert inserted is not None
    credit_id, at = int(inserted[0]), inserted[1]
    record(
        conn,
        org_id=org,
        actor=actor,
        action="credit_stability_budget",
        entity="lot",
        key=f"{gtin}/{lot}",
        old={"credited_s": already},
        new={"credited_s": already + seconds, "credit_id": credit_id, "alert_id": alert_id},
        reason=reason.strip(),
    )
    return {
        **_credit_doc(credit_id, seconds, reason.strip(), alert_id, actor, at),
        "credited_s": already + seconds,
    }


def _credit_doc(
    credit_id: int, seconds: float, reason: str, alert_id: int | None, actor: str, at: datetime
) -> dict[str, Any]:
    return {
        "id": credit_id,
        "seconds": seconds,
        "reason": reason,
        "alert_id": alert_id,
        "credited_by": actor,
        "credited_at": at,
    }


def budget_episode_prefix(gtin: str, lot: str) -> str:
    """Episode keys of a lot's budget alerts; the credit count follows, so each credit that
    restores the budget lets a later exhaustion open a new alert."""
    return f"lot:{gtin}:{lot}:budget:"


def open_budget_alerts(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> list[int]:
    """Ids of the lot's stability-budget alerts still open or acknowledged."""
    rows = conn.execute(
        "SELECT id FROM alerts WHERE org_id = %s AND kind = 'stability_budget'"
        " AND left(episode_key, length(%s)) = %s AND state IN ('open', 'acknowledged') ORDER BY id",
        (org, budget_episode_prefix(gtin, lot), budget_episode_prefix(gtin, lot)),
    ).fetchall()
    return [int(r[0]) for r in rows]
