"""Alarm profiles: limits, delays, budgets and MKT limits (the built-in ones are in `coldchain.presets`,
the excursions they define in `coldchain.excursion`).

An alarm profile is data: it is stored, versioned and sent over HTTP as a plain JSON-safe dict
(`AlarmProfile.to_dict` / `AlarmProfile.from_dict`). Unknown keys are refused, so a misspelt
setting can never be silently ignored. The semantics of every field are written out in
docs/alarm-rules.md; the engine that applies them is `rules.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from coldchain.domain import Severity
from coldchain.field_checks import (
    check_bool,
    check_float,
    check_id,
    check_seconds,
    check_tier,
    fail,
    fields_of,
)

__all__ = [
    "MKT_WINDOWS",
    "AlarmProfile",
    "FreezeThaw",
    "HumidityLimit",
    "LightWindow",
    "Limit",
    "MktLimit",
    "MktWindow",
    "Side",
]

Side = Literal["high", "low"]
MktWindow = Literal["24h", "30d", "trip"]
MKT_WINDOWS: tuple[MktWindow, ...] = ("24h", "30d", "trip")
_ABSOLUTE_ZERO_C = -273.15


def _check_side(where: str, value: object) -> Side:
    if value == "high" or value == "low":
        return value
    raise fail(where, f"must be 'high' or 'low', got {value!r}")


# --- limits -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """One temperature limit: a threshold on one side, with a single-event delay and/or budget.

    `inclusive=True` means reaching the threshold already counts as beyond it (WHO indicators:
    ">= 45 °C"); `inclusive=False` means the value must pass it ("> 8 °C").
    Limits that share a `budget_group` share one cumulative budget (a "dual boundary"): the
    group's time is the time beyond at least one of its limits.
    """

    id: str
    side: Side
    threshold_c: float
    inclusive: bool = False
    tier: Severity = Severity.ALARM
    single_event_delay_s: int | None = None
    cumulative_budget_s: int | None = None
    budget_group: str | None = None

    def __post_init__(self) -> None:
        where = f"limit {self.id!r}"
        check_id("limit.id", self.id)
        _check_side(f"{where}.side", self.side)
        check_float(f"{where}.threshold_c", self.threshold_c, low=_ABSOLUTE_ZERO_C)
        check_bool(f"{where}.inclusive", self.inclusive)
        object.__setattr__(self, "tier", check_tier(f"{where}.tier", self.tier))
        check_seconds(f"{where}.single_event_delay_s", self.single_event_delay_s, optional=True)
        check_seconds(f"{where}.cumulative_budget_s", self.cumulative_budget_s, optional=True)
        if self.single_event_delay_s is None and self.cumulative_budget_s is None:
            raise fail(where, "needs a single_event_delay_s, a cumulative_budget_s, or both")
        if self.cumulative_budget_s is not None and self.cumulative_budget_s == 0:
            raise fail(f"{where}.cumulative_budget_s", "must be > 0 (use a delay of 0 instead)")
        if self.budget_group is not None:
            check_id(f"{where}.budget_group", self.budget_group)
            if self.cumulative_budget_s is None:
                raise fail(f"{where}.budget_group", "a budget group needs cumulative_budget_s")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "side": self.side,
            "threshold_c": self.threshold_c,
            "inclusive": self.inclusive,
            "tier": self.tier.value,
            "single_event_delay_s": self.single_event_delay_s,
            "cumulative_budget_s": self.cumulative_budget_s,
            "budget_group": self.budget_group,
        }

    @classmethod
    def from_dict(cls, raw: object, *, where: str = "limit") -> Limit:
        d = fields_of(
            where,
            raw,
            required=frozenset({"id", "side", "threshold_c"}),
            optional=frozenset(
                {"inclusive", "tier", "single_event_delay_s", "cumulative_budget_s",
                 "budget_group"}
            ),
        )
        return cls(**d)


@dataclass(frozen=True, slots=True, kw_only=True)
class HumidityLimit:
    """One relative-humidity limit (percent), raised after `delay_s` continuously beyond it."""

    id: str
    side: Side
    threshold_pct: float
    inclusive: bool = False
    tier: Severity = Severity.WARNING
    delay_s: int = 0

    def __post_init__(self) -> None:
        where = f"humidity limit {self.id!r}"
        check_id("humidity_limit.id", self.id)
        _check_side(f"{where}.side", self.side)
        pct = check_float(f"{where}.threshold_pct", self.threshold_pct)
        if not 0.0 <= pct <= 100.0:
            raise fail(f"{where}.threshold_pct", f"must be within 0..100, got {pct!r}")
        check_bool(f"{where}.inclusive", self.inclusive)
        object.__setattr__(self, "tier", check_tier(f"{where}.tier", self.tier))
        check_seconds(f"{where}.delay_s", self.delay_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "side": self.side,
            "threshold_pct": self.threshold_pct,
            "inclusive": self.inclusive,
            "tier": self.tier.value,
            "delay_s": self.delay_s,
        }

    @classmethod
    def from_dict(cls, raw: object, *, where: str = "humidity_limit") -> HumidityLimit:
        d = fields_of(
            where,
            raw,
            required=frozenset({"id", "side", "threshold_pct"}),
            optional=frozenset({"inclusive", "tier", "delay_s"}),
        )
        return cls(**d)


@dataclass(frozen=True, slots=True, kw_only=True)
class MktLimit:
    """A mean kinetic temperature ceiling over a window: rolling 24 h, rolling 30 days, or trip.

    Exceeded when MKT > `max_c` (USP <659>: "MKT not more than 25 °C" is allowed).
    `min_coverage_s` is the least span of data judged: a rolling window is only judged once the
    series covers the whole window (the default and the minimum), the trip MKT once the series
    covers `min_coverage_s` (default 24 h), so a warm loading hour alone cannot raise it.
    """

    id: str
    window: MktWindow
    max_c: float
    delta_h_over_r_k: float = 10_000.0
    tier: Severity = Severity.ALARM
    min_coverage_s: int | None = None

    def __post_init__(self) -> None:
        where = f"mkt limit {self.id!r}"
        check_id("mkt_limit.id", self.id)
        if self.window not in MKT_WINDOWS:
            raise fail(
                f"{where}.window", f"must be one of {list(MKT_WINDOWS)}, got {self.window!r}"
            )
        check_float(f"{where}.max_c", self.max_c, low=_ABSOLUTE_ZERO_C)
        dhr = check_float(f"{where}.delta_h_over_r_k", self.delta_h_over_r_k)
        if not 1_000.0 <= dhr <= 100_000.0:
            raise fail(f"{where}.delta_h_over_r_k", f"must be within 1000..100000 K, got {dhr!r}")
        object.__setattr__(self, "tier", check_tier(f"{where}.tier", self.tier))
        check_seconds(f"{where}.min_coverage_s", self.min_coverage_s, optional=True)
        if (
            self.window != "trip"
            and self.min_coverage_s is not None
            and self.min_coverage_s != self.window_s
        ):
            raise fail(
                    f"{where}.min_coverage_s",
                    "a rolling window is judged only when fully covered; leave it unset",
                )

    @property
    def window_s(self) -> int | None:
        """The rolling window's length in seconds; None for the whole trip."""
        return {"24h": 86_400, "30d": 30 * 86_400, "trip": None}[self.window]

    @property
    def step_s(self) -> int:
        """How often the window is judged: every whole hour (24 h, trip) or whole day (30 d)."""
        return 86_400 if self.window == "30d" else 3_600

    @property
    def coverage_s(self) -> int:
        """The least span of data judged (see the class docstring)."""
        if self.window_s is not None:
            return self.window_s
        return 86_400 if self.min_coverage_s is None else self.min_coverage_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "window": self.window,
            "max_c": self.max_c,
            "delta_h_over_r_k": self.delta_h_over_r_k,
            "tier": self.tier.value,
            "min_coverage_s": self.min_coverage_s,
        }

    @classmethod
    def from_dict(cls, raw: object, *, where: str = "mkt_limit") -> MktLimit:
        d = fields_of(
            where,
            raw,
            required=frozenset({"id", "window", "max_c"}),
            optional=frozenset({"delta_h_over_r_k", "tier", "min_coverage_s"}),
        )
        return cls(**d)


# --- freeze-thaw counting ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FreezeThaw:
    """How freeze-thaw cycles are counted: a cycle is a stay below `freeze_below_c` lasting at
    least `min_frozen_s`, later followed by a stay above `thaw_above_c` lasting at least
    `min_thawed_s` (sample-and-hold durations, as for every limit)."""

    freeze_below_c: float = 0.0
    thaw_above_c: float = 2.0
    min_frozen_s: int = 3600
    min_thawed_s: int = 3600

    def __post_init__(self) -> None:
        where = "profile.freeze_thaw"
        check_float(f"{where}.freeze_below_c", self.freeze_below_c, low=_ABSOLUTE_ZERO_C)
        check_float(f"{where}.thaw_above_c", self.thaw_above_c, low=_ABSOLUTE_ZERO_C)
        if self.thaw_above_c < self.freeze_below_c:
            raise fail(f"{where}.thaw_above_c", "must not be below freeze_below_c")
        check_seconds(f"{where}.min_frozen_s", self.min_frozen_s)
        check_seconds(f"{where}.min_thawed_s", self.min_thawed_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "freeze_below_c": self.freeze_below_c,
            "thaw_above_c": self.thaw_above_c,
            "min_frozen_s": self.min_frozen_s,
            "min_thawed_s": self.min_thawed_s,
        }

    @classmethod
    def from_dict(cls, raw: object, *, where: str = "profile.freeze_thaw") -> FreezeThaw:
        return cls(**fields_of(where, raw, required=frozenset(), optional=frozenset(
            {"freeze_below_c", "thaw_above_c", "min_frozen_s", "min_thawed_s"})))


# --- handling: door, light, shock ---------------------------------------------------------------


def _minute_of_day(where: str, value: object) -> int:
    if isinstance(value, str) and len(value) == 5 and value[2] == ":":
        hh, mm = value[:2], value[3:]
        if hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60:
            return int(hh) * 60 + int(mm)
    raise fail(where, f"must be a time of day 'HH:MM' (UTC), got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LightWindow:
    """A daily UTC window in which light inside the box (opening it) is allowed: from `start_utc`
    up to, not including, `end_utc`; a window whose end is before its start runs past midnight."""

    start_utc: str
    end_utc: str

    def __post_init__(self) -> None:
        where = "profile.light_windows"
        if _minute_of_day(f"{where}.start_utc", self.start_utc) == _minute_of_day(
            f"{where}.end_utc", self.end_utc
        ):
            raise fail(where, "a window must not start and end at the same time")

    @property
    def minutes(self) -> tuple[int, int]:
        """(start, end) in minutes after midnight UTC."""
        return _minute_of_day("start_utc", self.start_utc), _minute_of_day("end_utc", self.end_utc)

    def to_dict(self) -> dict[str, Any]:
        return {"start_utc": self.start_utc, "end_utc": self.end_utc}

    @classmethod
    def from_dict(cls, raw: object, *, where: str = "profile.light_windows") -> LightWindow:
        keys = frozenset({"start_utc", "end_utc"})
        return cls(**fields_of(where, raw, required=keys, optional=frozenset()))


DOOR_LIMIT_ID = "DOOR"
LIGHT_LIMIT_ID = "LIGHT"
SHOCK_LIMIT_ID = "SHOCK"


# --- the profile --------------------------------------------------------------------------------

_PROFILE_REQUIRED = frozenset({"id", "version", "name", "limits"})

_PROFILE_OPTIONAL = frozenset(
    {
        "freeze_thaw",
        "description",
        "start_delay_s",
        "door_open_tolerance_s",
        "rate_of_change_c_per_min",
        "rate_of_change_tier",
        "humidity_limits",
        "humidity_hysteresis_pct",
        "mkt_limits",
        "no_data_intervals",
        "seq_gap_alarm",
        "low_battery_pct",
        "hysteresis_c",
        "resolve_hold_s",
        "door_open_max_min",
        "light_windows",
        "shock_max_g",
        "handling_tier",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmProfile:
    """A versioned set of alarm rules; the version in force is frozen onto every excursion.

    `hysteresis_c` and `resolve_hold_s` end an excursion's episode: the value must come back
    inside the limit by at least `hysteresis_c` and stay there for `resolve_hold_s`.
    `no_data_intervals`, `seq_gap_alarm` and `low_battery_pct` describe device conditions that
    the runner checks from device metadata; the pure engine does not see them.
    """

    id: str
    version: int
    name: str
    limits: tuple[Limit, ...]
    description: str = ""
    start_delay_s: int = 0
    door_open_tolerance_s: int = 0
    rate_of_change_c_per_min: float | None = None
    rate_of_change_tier: Severity = Severity.WARNING
    humidity_limits: tuple[HumidityLimit, ...] = ()
    humidity_hysteresis_pct: float = 0.0
    mkt_limits: tuple[MktLimit, ...] = ()
    no_data_intervals: int | None = None
    seq_gap_alarm: bool = True
    low_battery_pct: float | None = None
    hysteresis_c: float = 0.0
    resolve_hold_s: int = 0
    freeze_thaw: FreezeThaw | None = None  # counted in the figures, never an alarm by itself
    # handling rules (docs/alarm-rules.md): None = not judged
    door_open_max_min: int | None = None
    light_windows: tuple[LightWindow, ...] | None = None  # () = light is never allowed
    shock_max_g: float | None = None
    handling_tier: Severity = Severity.ALARM

    def __post_init__(self) -> None:
        check_id("profile.id", self.id)
        where = f"profile {self.id!r}"
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise fail(f"{where}.version", f"must be a whole number >= 1, got {self.version!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise fail(f"{where}.name", "must be a non-empty string")
        if not isinstance(self.description, str):
            raise fail(f"{where}.description", "must be a string")
        for attr, kind in (
            ("limits", Limit),
            ("humidity_limits", HumidityLimit),
            ("mkt_limits", MktLimit),
        ):
            items = getattr(self, attr)
            if not isinstance(items, tuple | list) or not all(isinstance(x, kind) for x in items):
                raise fail(f"{where}.{attr}", f"must be a list of {kind.__name__}")
            object.__setattr__(self, attr, tuple(items))
        check_seconds(f"{where}.start_delay_s", self.start_delay_s)
        check_seconds(f"{where}.door_open_tolerance_s", self.door_open_tolerance_s)
        check_seconds(f"{where}.resolve_hold_s", self.resolve_hold_s)
        if self.rate_of_change_c_per_min is not None:
            check_float(f"{where}.rate_of_change_c_per_min", self.rate_of_change_c_per_min, low=0)
        object.__setattr__(
            self,
            "rate_of_change_tier",
            check_tier(f"{where}.rate_of_change_tier", self.rate_of_change_tier),
        )
        if check_float(f"{where}.hysteresis_c", self.hysteresis_c) < 0:
            raise fail(f"{where}.hysteresis_c", "must be >= 0")
        if check_float(f"{where}.humidity_hysteresis_pct", self.humidity_hysteresis_pct) < 0:
            raise fail(f"{where}.humidity_hysteresis_pct", "must be >= 0")
        if self.no_data_intervals is not None and (
            isinstance(self.no_data_intervals, bool)
            or not isinstance(self.no_data_intervals, int)
            or self.no_data_intervals < 1
        ):
            raise fail(f"{where}.no_data_intervals", "must be a whole number >= 1 or null")
        check_bool(f"{where}.seq_gap_alarm", self.seq_gap_alarm)
        if self.low_battery_pct is not None:
            pct = check_float(f"{where}.low_battery_pct", self.low_battery_pct)
            if not 0.0 <= pct <= 100.0:
                raise fail(f"{where}.low_battery_pct", "must be within 0..100")
        self._check_handling(where)
        self._check_ids_and_groups(where)

    def _check_handling(self, where: str) -> None:
        if self.door_open_max_min is not None and (
            isinstance(self.door_open_max_min, bool)
            or not isinstance(self.door_open_max_min, int)
            or not 1 <= self.door_open_max_min <= 10_080
        ):
            raise fail(f"{where}.door_open_max_min", "must be a whole number of minutes 1..10080 or null")
        if self.light_windows is not None:
            if not isinstance(self.light_windows, tuple | list) or not all(
                isinstance(x, LightWindow) for x in self.light_windows
            ):
                raise fail(f"{where}.light_windows", "must be a list of windows or null")
            object.__setattr__(self, "light_windows", tuple(self.light_windows))
        shock = self.shock_max_g
        if shock is not None and not 0 < check_float(f"{where}.shock_max_g", shock) <= 1000:
            raise fail(f"{where}.shock_max_g", "must be within 0..1000 g (exclusive of 0)")
        object.__setattr__(self, "handling_tier", check_tier(f"{where}.handling_tier", self.handling_tier))

    def _check_ids_and_groups(self, where: str) -> None:
        ids: list[str] = [x.id for x in self.limits]
        ids += [x.id for x in self.humidity_limits]
        ids += [x.id for x in self.mkt_limits]
        if self.rate_of_change_c_per_min is not None:
            ids.append(RATE_LIMIT_ID)
        ids += [
            rule_id
            for rule_id, on in (
                (DOOR_LIMIT_ID, self.door_open_max_min is not None),
                (LIGHT_LIMIT_ID, self.light_windows is not None),
                (SHOCK_LIMIT_ID, self.shock_max_g is not None),
            )
            if on
        ]
        groups: dict[str, list[Limit]] = {}
        for limit in self.limits:
            if limit.budget_group is not None:
                groups.setdefault(limit.budget_group, []).append(limit)
        ids.extend(groups)
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise fail(f"{where}.limits", f"ids must be unique (limits, groups, MKT): {dupes}")
        for name, members in groups.items():
            if len({m.cumulative_budget_s for m in members}) != 1:
                raise fail(f"{where}.budget_group {name!r}", "members must share one budget")
            if len({m.tier for m in members}) != 1:
                raise fail(f"{where}.budget_group {name!r}", "members must share one tier")

    @property
    def budget_groups(self) -> dict[str, tuple[Limit, ...]]:
        """Limits sharing one cumulative budget, by group name, in profile order."""
        groups: dict[str, list[Limit]] = {}
        for limit in self.limits:
            if limit.budget_group is not None:
                groups.setdefault(limit.budget_group, []).append(limit)
        return {name: tuple(members) for name, members in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "limits": [x.to_dict() for x in self.limits],
            "start_delay_s": self.start_delay_s,
            "door_open_tolerance_s": self.door_open_tolerance_s,
            "rate_of_change_c_per_min": self.rate_of_change_c_per_min,
            "rate_of_change_tier": self.rate_of_change_tier.value,
            "humidity_limits": [x.to_dict() for x in self.humidity_limits],
            "humidity_hysteresis_pct": self.humidity_hysteresis_pct,
            "mkt_limits": [x.to_dict() for x in self.mkt_limits],
            "no_data_intervals": self.no_data_intervals,
            "seq_gap_alarm": self.seq_gap_alarm,
            "low_battery_pct": self.low_battery_pct,
            "hysteresis_c": self.hysteresis_c,
            "resolve_hold_s": self.resolve_hold_s,
            # only when set, so the stored bodies of existing profiles keep their exact form
            **({"freeze_thaw": self.freeze_thaw.to_dict()} if self.freeze_thaw is not None else {}),
            **self._handling_dict(),
        }

    def _handling_dict(self) -> dict[str, Any]:
        """The handling rules, only those set (stored bodies of older profiles keep their form)."""
        out: dict[str, Any] = {}
        if self.door_open_max_min is not None:
            out["door_open_max_min"] = self.door_open_max_min
        if self.light_windows is not None:
            out["light_windows"] = [x.to_dict() for x in self.light_windows]
        if self.shock_max_g is not None:
            out["shock_max_g"] = self.shock_max_g
        if out or self.handling_tier is not Severity.ALARM:
            out["handling_tier"] = self.handling_tier.value
        return out

    def edge_alarm(self) -> dict[str, Any]:
        """The part a logger evaluates itself (its local alarm), as DeviceConfig.profile carries it.

        Only single-event limits: a cumulative budget needs the whole series, which only the
        platform has. The profile's id and version say which rules the local alarm follows.
        """
        return {
            "id": self.id,
            "version": self.version,
            "limits": [
                {
                    "id": x.id,
                    "side": x.side,
                    "threshold_c": x.threshold_c,
                    "inclusive": x.inclusive,
                    "single_event_delay_s": x.single_event_delay_s,
                }
                for x in self.limits
                if x.single_event_delay_s is not None
            ],
            "hysteresis_c": self.hysteresis_c,
            "start_delay_s": self.start_delay_s,
            **{k: v for k, v in self._handling_dict().items() if k != "handling_tier"},
        }

    @classmethod
    def from_dict(cls, raw: object) -> AlarmProfile:
        """Build a profile from a JSON-safe dict; any unknown or ill-typed key is refused."""
        d = fields_of("profile", raw, required=_PROFILE_REQUIRED, optional=_PROFILE_OPTIONAL)
        for key, parse in (
            ("limits", Limit.from_dict),
            ("humidity_limits", HumidityLimit.from_dict),
            ("mkt_limits", MktLimit.from_dict),
        ):
            if key in d:
                items = d[key]
                if not isinstance(items, list | tuple):
                    raise fail(f"profile.{key}", "must be a list")
                d[key] = tuple(parse(x, where=f"profile.{key}[{i}]") for i, x in enumerate(items))
        if d.get("freeze_thaw") is not None:
            d["freeze_thaw"] = FreezeThaw.from_dict(d["freeze_thaw"])
        if d.get("light_windows") is not None:
            items = d["light_windows"]
            if not isinstance(items, list | tuple):
                raise fail("profile.light_windows", "must be a list")
            d["light_windows"] = tuple(
                LightWindow.from_dict(x, where=f"profile.light_windows[{i}]") for i, x in enumerate(items)
            )
        return cls(**d)


RATE_LIMIT_ID = "ROC"
