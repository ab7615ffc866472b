"""Alarm profiles: presets, dict round trips, and clear refusals of bad profile documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coldchain.alarm_profile import AlarmProfile, Limit
from coldchain.domain import Severity
from coldchain.errors import ValidationError
from coldchain.excursion import Excursion, ExcursionKind
from coldchain.presets import get_preset, list_presets, who_pqs_30day

PRESET_IDS = ["2-8C", "15-25C", "frozen-20C", "who-pqs-30day", "who-shipping-indicator-1"]


def test_presets_are_listed_and_round_trip_through_json() -> None:
    assert [p.id for p in list_presets()] == PRESET_IDS
    for profile in list_presets():
        again = AlarmProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
        assert again == profile
        assert get_preset(profile.id) == profile


def test_who_presets_say_what_the_standards_say() -> None:
    who = {x.id: x for x in get_preset("who-pqs-30day").limits}
    assert (who["H1"].threshold_c, who["H1"].inclusive, who["H1"].single_event_delay_s) == (
        8.0, True, 36_000
    )
    assert (who["L1"].threshold_c, who["L1"].inclusive, who["L1"].single_event_delay_s) == (
        -0.5, True, 3_600
    )
    cumulative = {x.id: x for x in who_pqs_30day(heat_mode="cumulative").limits}
    assert (cumulative["H1"].cumulative_budget_s, cumulative["H1"].single_event_delay_s) == (
        36_000, None
    )
    ship = {x.id: x for x in get_preset("who-shipping-indicator-1").limits}
    assert all(x.inclusive for x in ship.values())
    assert (ship["H1"].threshold_c, ship["H1"].single_event_delay_s) == (45.0, 3_600)
    assert (ship["H2"].threshold_c, ship["H2"].cumulative_budget_s) == (30.0, 36_000)
    assert (ship["L1"].threshold_c, ship["L1"].single_event_delay_s) == (-0.5, 3_600)
    crt = get_preset("15-25C")
    assert {(m.window, m.max_c) for m in crt.mkt_limits} == {("30d", 25.0), ("trip", 25.0)}


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="2-8C"):
        get_preset("2-9C")


def base() -> dict[str, Any]:
    return get_preset("2-8C").to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(treshold=1), r"profile: unknown key\(s\) \['treshold'\]"),
        (lambda d: d["limits"][1].update(treshold_c=1), r"profile.limits\[1\]: unknown key"),
        (lambda d: d.pop("version"), r"missing key\(s\) \['version'\]"),
        (lambda d: d.update(version=0), "version: must be a whole number >= 1"),
        (lambda d: d["limits"][0].update(side="up"), "side: must be 'high' or 'low'"),
        (lambda d: d["limits"][0].update(tier="panic"), "tier: must be one of"),
        (lambda d: d["limits"][0].update(threshold_c="8"), "threshold_c: must be a finite"),
        (lambda d: d["limits"][0].update(threshold_c=float("nan")), "must be a finite"),
        (lambda d: d["limits"][0].update(single_event_delay_s=1.5), "whole number of seconds"),
        (lambda d: d["limits"][0].update(single_event_delay_s=None), "needs a single_event"),
        (lambda d: d["limits"][1].update(id="H1"), r"ids must be unique.*\['H1'\]"),
        (lambda d: d["mkt_limits"][0].update(window="7d"), "window: must be one of"),
        (lambda d: d["mkt_limits"][0].update(delta_h_over_r_k=5), "within 1000..100000"),
        (lambda d: d.update(limits={"H1": 1}), "profile.limits: must be a list"),
        (lambda d: d.update(hysteresis_c=-1), "hysteresis_c: must be >= 0"),
    ],
)
def test_bad_profiles_are_refused_with_a_clear_message(mutate: Any, message: str) -> None:
    raw = base()
    mutate(raw)
    with pytest.raises(ValidationError, match=message):
        AlarmProfile.from_dict(raw)


def test_budget_groups_must_agree() -> None:
    with pytest.raises(ValidationError, match="share one budget"):
        AlarmProfile(
            id="p", version=1, name="dual",
            limits=(
                Limit(id="H1", side="high", threshold_c=8, cumulative_budget_s=60,
                      budget_group="G"),
                Limit(id="L1", side="low", threshold_c=2, cumulative_budget_s=120,
                      budget_group="G"),
            ),
        )


def test_excursion_round_trips() -> None:
    x = Excursion(
        profile_id="2-8C", profile_version=1, limit_id="H1", tier=Severity.ALARM,
        kind=ExcursionKind.SINGLE, start_ms=1, end_ms=None, raised_ms=2, resolved_ms=None,
        peak_value=9.5, duration_s=0.5,
    )
    assert Excursion.from_dict(json.loads(json.dumps(x.to_dict()))) == x
    with pytest.raises(ValidationError, match="unknown key"):
        Excursion.from_dict({**x.to_dict(), "extra": 1})
