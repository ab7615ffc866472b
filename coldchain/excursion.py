"""An excursion: one episode of a limit broken, as the rules engine reports it and alerts carry it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coldchain.domain import Severity
from coldchain.field_checks import check_tier, fail, fields_of

__all__ = ["Excursion", "ExcursionKind"]


class ExcursionKind(StrEnum):
    """What kind of rule an excursion broke."""

    SINGLE = "single"
    CUMULATIVE = "cumulative"
    RATE = "rate"
    HUMIDITY = "humidity"
    MKT = "mkt"
    DOOR = "door"  # door open longer than the profile allows
    LIGHT = "light"  # light inside the box outside its allowed windows (the box was opened)
    SHOCK = "shock"  # a shock above the profile's limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Excursion:
    """One excursion as the engine sees it after a batch; identified by `key`.

    Times are epoch milliseconds. `end_ms` is None while the excursion is still open.
    `raised_ms` is when the rule was met (alarm time); `resolved_ms` when the episode ended
    (hysteresis band held for the hold time). `peak_value` is in °C (single, cumulative, mkt),
    %RH (humidity) or °C per minute, as a magnitude (rate); for door and light excursions it is
    the warmest reading while open (°C), for shock the largest shock (g). `duration_s` is the
    episode's span for every kind but cumulative, and for cumulative ones the total time beyond
    the limit (or budget group) over the series.
    """

    profile_id: str
    profile_version: int
    limit_id: str
    tier: Severity
    kind: ExcursionKind
    start_ms: int
    end_ms: int | None
    raised_ms: int
    resolved_ms: int | None
    peak_value: float
    duration_s: float

    @property
    def key(self) -> tuple[str, str, int]:
        """(kind, limit id, start): an excursion's identity across batches and restarts."""
        return (self.kind.value, self.limit_id, self.start_ms)

    @property
    def is_open(self) -> bool:
        return self.end_ms is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile_id,
            "profile_version": self.profile_version,
            "limit_id": self.limit_id,
            "tier": self.tier.value,
            "kind": self.kind.value,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "raised_ms": self.raised_ms,
            "resolved_ms": self.resolved_ms,
            "peak_value": self.peak_value,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_dict(cls, raw: object) -> Excursion:
        d = fields_of(
            "excursion",
            raw,
            required=frozenset(
                {"profile_id", "profile_version", "limit_id", "tier", "kind", "start_ms",
                 "end_ms", "raised_ms", "resolved_ms", "peak_value", "duration_s"}
            ),
            optional=frozenset(),
        )
        d["tier"] = check_tier("excursion.tier", d["tier"])
        try:
            d["kind"] = ExcursionKind(d["kind"])
        except ValueError:
            raise fail("excursion.kind", f"unknown kind {d['kind']!r}") from None
        return cls(**d)
