"""The checks every kernel type that is read from JSON applies to its fields, with one wording.

Each raises ValidationError naming the field (`where`), so an API refusal says exactly which key
of a profile or an excursion was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from coldchain.domain import Severity
from coldchain.errors import ValidationError

__all__ = ["check_bool", "check_float", "check_id", "check_seconds", "check_tier", "fail", "fields_of"]


def fail(where: str, message: str) -> ValidationError:
    return ValidationError(f"{where}: {message}", field=where)


def check_id(where: str, value: object) -> str:
    if not isinstance(value, str) or not (1 <= len(value) <= 64) or not value.isprintable():
        raise fail(where, f"must be a printable string of 1 to 64 characters, got {value!r}")
    return value


def check_seconds(where: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(where, f"must be a whole number of seconds >= 0, got {value!r}")
    return value


def check_float(where: str, value: object, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(where, f"must be a finite number, got {value!r}")
    if low is not None and value <= low:
        raise fail(where, f"must be greater than {low}, got {value!r}")
    return float(value)


def check_tier(where: str, value: object) -> Severity:
    if isinstance(value, str) and value in {s.value for s in Severity}:
        return Severity(value)
    raise fail(where, f"must be one of {[s.value for s in Severity]}, got {value!r}")


def check_bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise fail(where, f"must be true or false, got {value!r}")
    return value


def fields_of(
    where: str, raw: object, *, required: frozenset[str], optional: frozenset[str]
) -> dict[str, Any]:
    """Check a dict's keys: every required key present, nothing unknown."""
    if not isinstance(raw, Mapping):
        raise fail(where, f"must be an object, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in required | optional)
    if unknown:
        raise fail(
            where, f"unknown key(s) {unknown}; allowed: {sorted(required | optional)}"
        )
    missing = sorted(required - set(raw))
    if missing:
        raise fail(where, f"missing key(s) {missing}")
    return dict(raw)
