"""Typed rows: columns by name into a dataclass, text into the field's enum, arrays into tuples."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pytest

from coldchain.domain import AlertState, Severity
from storage.rows import fetch_all, fetch_one


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    severity: Severity
    state: AlertState | None
    roles: tuple[str, ...]
    lots: tuple[tuple[str, str], ...]


def test_columns_are_matched_by_name_and_converted(db: psycopg.Connection) -> None:
    row = fetch_one(
        db,
        _Row,
        "SELECT ARRAY[ARRAY['09506000134352', 'A1']] AS lots, 'critical' AS severity, 7 AS id,"
        " NULL::text AS state, ARRAY['qa', 'driver'] AS roles",
    )
    assert row == _Row(7, Severity.CRITICAL, None, ("qa", "driver"), (("09506000134352", "A1"),))
    assert row is not None and row.severity is Severity.CRITICAL


def test_many_rows_and_no_row(db: psycopg.Connection) -> None:
    rows = fetch_all(
        db,
        _Row,
        "SELECT g AS id, 'warning' AS severity, 'open' AS state, '{}'::text[] AS roles,"
        " '{}'::text[] AS lots FROM generate_series(1, 3) AS g ORDER BY g",
    )
    assert [r.id for r in rows] == [1, 2, 3] and all(r.state is AlertState.OPEN for r in rows)
    assert fetch_one(db, _Row, "SELECT 1 AS id WHERE false") is None


def test_an_unknown_enum_value_is_refused(db: psycopg.Connection) -> None:
    with pytest.raises(ValueError):
        fetch_one(db, _Row, "SELECT 1 AS id, 'loud' AS severity, NULL AS state, '{}'::text[] AS roles,"
                  " '{}'::text[] AS lots")
