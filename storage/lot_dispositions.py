"""Lot dispositions in PostgreSQL: QA's decisions on a lot, one row each (never updated), the
lot's state (its latest decision), and the excursions that stand in the way of a release.
Every function runs in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from coldchain.disposition import LotState
from coldchain.domain import Disposition
from storage.audit import record

_EXCURSION_KINDS = ["single", "cumulative", "rate", "humidity", "mkt", "stability_budget"]


@dataclass(frozen=True, slots=True)
class DispositionRow:
    id: int
    gtin: str
    lot: str
    state: str
    previous: str | None
    comment: str
    decided_by: str
    decided_at: datetime

    def signed_record(self) -> dict[str, Any]:
        """The decision as its signature covers it (rebuilt the same way on every read)."""
        return {
            "entity": "lot_disposition",
            "id": self.id,
            "gtin": self.gtin,
            "lot": self.lot,
            "state": self.state,
            "previous": self.previous,
            "comment": self.comment,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
        }


_COLUMNS = "id, gtin, lot, state, previous, comment, decided_by, decided_at"


def history(conn: psycopg.Connection, *, org: int, gtin: str, lot: str) -> list[DispositionRow]:
    """Every decision on the lot, oldest first."""
    with conn.cursor(row_factory=class_row(DispositionRow)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM lot_dispositions WHERE org_id = %s AND gtin = %s AND lot = %s"
            " ORDER BY id",
            (org, gtin, lot),
        ).fetchall()


def states(conn: psycopg.Connection, *, org: int, lots: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The current state of each of these lots that has a decision (others are pending)."""
    if not lots:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (d.gtin, d.lot) d.gtin, d.lot, d.state"
        " FROM unnest(%s::char(14)[], %s::text[]) AS w(gtin, lot)"
        " JOIN lot_dispositions d ON d.org_id = %s AND d.gtin = w.gtin AND d.lot = w.lot"
        " ORDER BY d.gtin, d.lot, d.id DESC",
        ([g for g, _ in lots], [n for _, n in lots], org),
    ).fetchall()
    return {(str(g), str(n)): str(s) for g, n, s in rows}


def current_state(conn: psycopg.Connection, *, org: int, gtin: str, lot: str, lock: bool = False) -> LotState:
    """The lot's state; with `lock`, the lot row is locked so two decisions cannot interleave."""
    if lock:
        conn.execute(
            "SELECT 1 FROM lots WHERE org_id = %s AND gtin = %s AND lot = %s FOR UPDATE", (org, gtin, lot)
        )
    row = conn.execute(
        "SELECT state FROM lot_dispositions WHERE org_id = %s AND gtin = %s AND lot = %s"
        " ORDER BY id DESC LIMIT 1",
        (org, gtin, lot),
    ).fetchone()
    return LotState.PENDING if row is None else LotState(row[0])


def blocking_excursions(
    conn: psycopg.Connection, *, org: int, shipment_keys: list[int]
) -> list[tuple[int, str, str | None]]:
    """(alert id, state, disposition) of the lot's excursions that forbid a release: those not
    yet closed with QA's disposition, and those closed with `reject`."""
    rows = conn.execute(
        "SELECT id, state, disposition FROM alerts WHERE org_id = %s AND shipment_key = ANY(%s)"
        " AND kind = ANY(%s) AND (state <> 'closed' OR disposition = 'reject') ORDER BY id",
        (org, shipment_keys, _EXCURSION_KINDS),
    ).fetchall()
    return [(int(i), str(s), d) for i, s, d in rows]


def decide(
    conn: psycopg.Connection,
    *,
    org: int,
    gtin: str,
    lot: str,
    decision: Disposition,
    previous: LotState,
    comment: str,
    actor: str,
) -> DispositionRow:
    """Record a decision with its audit row (old and new state)."""
    with conn.cursor(row_factory=class_row(DispositionRow)) as cur:
        row = cur.execute(
            "INSERT INTO lot_dispositions (org_id, gtin, lot, state, previous, comment, decided_by)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (
                org, gtin, lot, decision.value,
                None if previous is LotState.PENDING else previous.value, comment, actor,
            ),
        ).fetchone()
    assert row is not None
    record(
        conn,
        org_id=org,
        actor=actor,
        action="disposition",
        entity="lot",
        key=f"{gtin}/{lot}",
        old={"state": previous.value},
        new={"state": decision.value, "disposition": row.id, "comment": comment},
        reason=comment,
    )
    return row
