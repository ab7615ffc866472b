"""The built-in alarm profiles, written as data: the same JSON form a user stores or sends over HTTP.

Each is read through `AlarmProfile.from_dict`, so a preset passes the checks every stored profile
passes; keys left out take the profile's defaults (docs/alarm-rules.md).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from coldchain.alarm_profile import AlarmProfile
from coldchain.errors import ValidationError

__all__ = ["get_preset", "list_presets", "who_pqs_30day"]

_TEN_HOURS_S: Final = 10 * 3_600

_REFRIGERATED: Final[dict[str, Any]] = {
    "id": "2-8C",
    "version": 1,
    "name": "Refrigerated 2-8 °C",
    "description": (
        "Controlled cold temperature (USP <659>): 2-8 °C labelled; excursions 0-15 °C "
        "allowed, spikes to 25 °C allowed if MKT (24 h, USP <1079.2>) <= 8 °C."
    ),
    "limits": [
        {"id": "H1", "side": "high", "threshold_c": 8.0, "single_event_delay_s": 1_800},
        {"id": "L1", "side": "low", "threshold_c": 2.0, "single_event_delay_s": 1_800},
        {"id": "H2", "side": "high", "threshold_c": 25.0, "tier": "critical", "single_event_delay_s": 0},
        {"id": "L2", "side": "low", "threshold_c": 0.0, "tier": "critical", "single_event_delay_s": 0},
    ],
    "mkt_limits": [{"id": "MKT-24h", "window": "24h", "max_c": 8.0}],
    "start_delay_s": 600,
    "hysteresis_c": 0.5,
    "resolve_hold_s": 600,
}

_ROOM_TEMPERATURE: Final[dict[str, Any]] = {
    "id": "15-25C",
    "version": 1,
    "name": "Controlled room temperature 15-25 °C",
    "description": (
        "Controlled room temperature (USP <659>): 20-25 °C labelled; excursions 15-30 °C "
        "allowed; spikes to 40 °C allowed if under 24 h and MKT <= 25 °C (30-day "
        "window per USP <1079.2>, and over the trip)."
    ),
    "limits": [
        {"id": "W1", "side": "high", "threshold_c": 25.0, "tier": "warning", "single_event_delay_s": 3_600},
        {"id": "H1", "side": "high", "threshold_c": 30.0, "single_event_delay_s": 86_400},
        {"id": "H2", "side": "high", "threshold_c": 40.0, "tier": "critical", "single_event_delay_s": 0},
        {"id": "L1", "side": "low", "threshold_c": 15.0, "single_event_delay_s": 0},
    ],
    "mkt_limits": [
        {"id": "MKT-30d", "window": "30d", "max_c": 25.0},
        {"id": "MKT-trip", "window": "trip", "max_c": 25.0},
    ],
    "start_delay_s": 600,
    "hysteresis_c": 0.5,
    "resolve_hold_s": 600,
}

_FROZEN: Final[dict[str, Any]] = {
    "id": "frozen-20C",
    "version": 1,
    "name": "Frozen -25..-15 °C",
    "description": "Frozen (USP <659> freezer): -25 to -10 °C; alarm above -15 °C.",
    "limits": [
        {"id": "H1", "side": "high", "threshold_c": -15.0, "single_event_delay_s": 1_800},
        {"id": "H2", "side": "high", "threshold_c": -10.0, "tier": "critical", "single_event_delay_s": 0},
        {"id": "L1", "side": "low", "threshold_c": -25.0, "tier": "warning", "single_event_delay_s": 3_600},
    ],
    "start_delay_s": 600,
    "hysteresis_c": 1.0,
    "resolve_hold_s": 600,
}


def _who_pqs_30day(heat_mode: Literal["single", "cumulative"]) -> dict[str, Any]:
    heat_delay = "single_event_delay_s" if heat_mode == "single" else "cumulative_budget_s"
    return {
        "id": "who-pqs-30day" if heat_mode == "single" else "who-pqs-30day-cumulative",
        "version": 1,
        "name": "WHO PQS 30-day temperature recorder",
        "description": (
            "WHO PQS E006 30-day electronic temperature recorder alarms: heat >= +8 °C for 10 h "
            f"({heat_mode}), freeze <= -0.5 °C for 60 min (single event)."
        ),
        "limits": [
            {"id": "H1", "side": "high", "threshold_c": 8.0, "inclusive": True, heat_delay: _TEN_HOURS_S},
            {"id": "L1", "side": "low", "threshold_c": -0.5, "inclusive": True,
             "single_event_delay_s": 3_600},
        ],
    }


_WHO_SHIPPING_INDICATOR_1: Final[dict[str, Any]] = {
    "id": "who-shipping-indicator-1",
    "version": 1,
    "name": "WHO shipping indicator, type 1",
    "description": (
        "WHO PQS E006/TR07 type 1: >= 45 °C for 1 h single event; >= 30 °C for 10 h "
        "cumulative; <= -0.5 °C for 1 h single event. Thresholds inclusive."
    ),
    "limits": [
        {"id": "H1", "side": "high", "threshold_c": 45.0, "inclusive": True, "single_event_delay_s": 3_600},
        {"id": "H2", "side": "high", "threshold_c": 30.0, "inclusive": True, "cumulative_budget_s": 36_000},
        {"id": "L1", "side": "low", "threshold_c": -0.5, "inclusive": True, "single_event_delay_s": 3_600},
    ],
}

_PRESETS: Final = (
    _REFRIGERATED,
    _ROOM_TEMPERATURE,
    _FROZEN,
    _who_pqs_30day("single"),
    _WHO_SHIPPING_INDICATOR_1,
)


def who_pqs_30day(*, heat_mode: Literal["single", "cumulative"] = "single") -> AlarmProfile:
    """WHO PQS 30-day temperature recorder alarms: heat >= +8 °C for 10 h, freeze <= -0.5 °C 60 min.

    Sources differ on whether the 10 h are consecutive or cumulative; the preset follows the
    single-event reading of the WHO PQS E006 30-day recorder specification and `heat_mode`
    switches it. Thresholds are inclusive.
    """
    if heat_mode not in ("single", "cumulative"):
        raise ValidationError(f"heat_mode must be 'single' or 'cumulative', got {heat_mode!r}")
    return AlarmProfile.from_dict(_who_pqs_30day(heat_mode))


def list_presets() -> tuple[AlarmProfile, ...]:
    """The built-in alarm profiles, in a fixed order."""
    return tuple(AlarmProfile.from_dict(p) for p in _PRESETS)


def get_preset(profile_id: str) -> AlarmProfile:
    """One built-in profile by id; raises ValidationError naming the known ids otherwise."""
    for preset in _PRESETS:
        if preset["id"] == profile_id:
            return AlarmProfile.from_dict(preset)
    known = [p["id"] for p in _PRESETS]
    raise ValidationError(f"no built-in alarm profile {profile_id!r}; known: {known}", field="id")
