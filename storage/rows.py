"""Typed rows: a query's columns, by name, into a frozen dataclass of this package.

`dataclass_row(Row)` is psycopg's `class_row` with the two conversions a dataclass does not do
by itself: a text column becomes the field's enum (`Severity`, `AlertState`...) and an array a
tuple. Columns are matched by name (`AS field` in the SQL), never by position, so adding a
column to a query cannot shift the others.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.rows import BaseRowFactory, RowMaker

__all__ = ["dataclass_row", "fetch_all", "fetch_one"]

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """How a column value becomes a value of this field type (None: taken as it is)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _converter(inner[0]) if len(inner) == 1 else None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is tuple:
            return lambda value: tuple(tuple(item) for item in value)  # a 2-D array: tuples of tuples
        return tuple
    return None


_CONVERTERS: dict[type[Any], dict[str, Callable[[Any], Any]]] = {}


def _converters(cls: type[Any]) -> dict[str, Callable[[Any], Any]]:
    found = _CONVERTERS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        every = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}
        found = _CONVERTERS[cls] = {name: conv for name, conv in every.items() if conv is not None}
    return found


def dataclass_row(cls: type[T]) -> BaseRowFactory[T]:
    """A row factory building `cls` from the columns of the same names (enums and tuples converted)."""
    converters = _converters(cls)

    def factory(cursor: Any) -> RowMaker[T]:
        names = [c.name for c in cursor.description or ()]

        def make(values: Sequence[Any]) -> T:
            fields = dict(zip(names, values, strict=True))
            for name, convert in converters.items():
                value = fields.get(name)
                if value is not None:
                    fields[name] = convert(value)
            return cls(**fields)

        return make

    return factory


def fetch_one(conn: psycopg.Connection, cls: type[T], query: LiteralString, params: Params = ()) -> T | None:
    with conn.cursor(row_factory=dataclass_row(cls)) as cur:
        return cur.execute(query, params).fetchone()


def fetch_all(conn: psycopg.Connection, cls: type[T], query: LiteralString, params: Params = ()) -> list[T]:
    with conn.cursor(row_factory=dataclass_row(cls)) as cur:
        return cur.execute(query, params).fetchall()
