"""The excursion engine against a plain per-reading loop, known cases, and batch/restart splits."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldchain.alarm_profile import AlarmProfile, HumidityLimit, Limit, MktLimit
from coldchain.domain import Severity
from coldchain.errors import ValidationError
from coldchain.excursion import Excursion, ExcursionKind
from coldchain.presets import get_preset
from rules.engine import (
    EngineState,
    SensorSeries,
    evaluate,
    evaluate_batches,
    fold_excursions,
    merge_batches,
)

MIN = 60_000
HOUR = 3_600_000


def series(temps: list[float], step_ms: int = MIN, start_ms: int = 0) -> SensorSeries:
    t = start_ms + np.arange(len(temps), dtype=np.int64) * step_ms
    return SensorSeries(t, np.asarray(temps, dtype=np.float64))


def one_limit(limit: Limit, **profile: object) -> AlarmProfile:
    return AlarmProfile(id="p", version=1, name="test", limits=(limit,), **profile)  # type: ignore[arg-type]


# --- the reference: one reading at a time, written from docs/alarm-rules.md -------------------


def classify(value: float, limit: Limit, hysteresis: float) -> str:
    thr = limit.threshold_c
    if limit.side == "high":
        beyond = value >= thr if limit.inclusive else value > thr
        release = value < thr - hysteresis if limit.inclusive else value <= thr - hysteresis
    else:
        beyond = value <= thr if limit.inclusive else value < thr
        release = value > thr + hysteresis if limit.inclusive else value >= thr + hysteresis
    return "B" if beyond else ("R" if release else "M")


@dataclass
class RefExcursion:
    limit_id: str
    kind: str
    start_ms: int
    end_ms: int | None
    raised_ms: int
    resolved_ms: int | None
    peak: float


def reference(
    times: list[int],
    temps: list[float],
    profile: AlarmProfile,
    door: list[bool] | None = None,
) -> tuple[list[RefExcursion], dict[str, int]]:
    """Single-event and cumulative excursions, and ms beyond each limit, by brute force."""
    out: list[RefExcursion] = []
    beyond_ms: dict[str, int] = {}
    n = len(times)
    hold = profile.resolve_hold_s * 1000
    delay_end = times[0] + profile.start_delay_s * 1000
    tol = profile.door_open_tolerance_s * 1000
    door_since: list[int | None] = []
    since: int | None = None
    for i in range(n):
        is_open = bool(door[i]) if door is not None else False
        if is_open and since is None:
            since = times[i]
        if not is_open:
            since = None
        door_since.append(since)
    for limit in profile.limits:
        classes = []
        for i in range(n):
            c = classify(temps[i], limit, profile.hysteresis_c)
            excused = door_since[i] is not None and times[i] - door_since[i] < tol  # type: ignore[operator]
            if c == "B" and (times[i] < delay_end or excused):
                c = "M"
            classes.append(c)
        # cumulative: each interval [t_i, t_i+1) whose reading is beyond
        total = 0
        raised = None
        first = None
        peak = None
        budget = limit.cumulative_budget_s
        for i in range(n):
            if classes[i] == "B":
                first = times[i] if first is None else first
                v = temps[i]
                if peak is None or (v > peak if limit.side == "high" else v < peak):
                    peak = v
            if i + 1 < n and classes[i] == "B":
                dt = times[i + 1] - times[i]
                if budget is not None and raised is None and total + dt >= budget * 1000:
                    raised = times[i] + (budget * 1000 - total)
                total += dt
        beyond_ms[limit.id] = total
        if raised is not None and limit.budget_group is None:
            assert first is not None and peak is not None
            out.append(RefExcursion(limit.id, "cumulative", first, None, raised, None, peak))
        if limit.single_event_delay_s is None:
            continue
        delay = limit.single_event_delay_s * 1000
        # runs, then episodes
        runs = []
        start = 0
        for i in range(1, n + 1):
            if i == n or classes[i] != classes[start]:
                end_t = times[i] if i < n else times[n - 1]
                runs.append((classes[start], start, i, times[start], end_t))
                start = i
        current: RefExcursion | None = None
        last_beyond_end: int | None = None
        for cls, a, b, t_start, t_end in runs:
            if cls == "B":
                if current is None and t_end - t_start >= delay:
                    current = RefExcursion(limit.id, "single", t_start, None, t_start + delay,
                                           None, temps[a])
                if current is not None:
                    seg = temps[a:b]
                    worst = max(seg) if limit.side == "high" else min(seg)
                    current.peak = (max(current.peak, worst) if limit.side == "high"
                                    else min(current.peak, worst))
                    last_beyond_end = t_end if b < n else None
            elif cls == "R" and current is not None and t_end - t_start >= hold:
                current.end_ms = last_beyond_end
                current.resolved_ms = t_start + hold
                out.append(current)
                current = None
        if current is not None:
            out.append(current)
    return out, beyond_ms


def engine_view(excursions: list[Excursion]) -> list[tuple[object, ...]]:
    return sorted(
        (x.limit_id, x.kind.value, x.start_ms, x.end_ms, x.raised_ms, x.resolved_ms, x.peak_value)
        for x in excursions
        if x.kind in (ExcursionKind.SINGLE, ExcursionKind.CUMULATIVE)
    )


def reference_view(excursions: list[RefExcursion]) -> list[tuple[object, ...]]:
    return sorted(
        (x.limit_id, x.kind, x.start_ms, x.end_ms, x.raised_ms, x.resolved_ms, x.peak)
        for x in excursions
    )


# --- strategies -------------------------------------------------------------------------------

# Coarse values on a 0.5 °C grid make readings land exactly on thresholds often.
values_st = st.lists(st.integers(-4, 24).map(lambda k: k / 2.0), min_size=1, max_size=120)
steps_st = st.lists(st.sampled_from([1, 30, 60, 60, 60, 90, 600]), min_size=120, max_size=120)


@st.composite
def profiles(draw: st.DrawFn) -> AlarmProfile:
    def limit(i: int, side: str) -> Limit:
        single = draw(st.one_of(st.none(), st.sampled_from([0, 60, 300, 1800])))
        budget = draw(st.sampled_from([None, 120, 3600])) if single is not None else 900
        return Limit(
            id=f"{side[0].upper()}{i}",
            side=side,  # type: ignore[arg-type]
            threshold_c=draw(st.integers(0, 20).map(lambda k: k / 2.0)),
            inclusive=draw(st.booleans()),
            tier=Severity.ALARM,
            single_event_delay_s=single,
            cumulative_budget_s=budget,
        )

    limits = [limit(i, "high") for i in range(draw(st.integers(1, 2)))]
    limits += [limit(i, "low") for i in range(draw(st.integers(0, 2)))]
    return AlarmProfile(
        id="p",
        version=1,
        name="generated",
        limits=tuple(limits),
        start_delay_s=draw(st.sampled_from([0, 0, 120, 600])),
        door_open_tolerance_s=draw(st.sampled_from([0, 0, 60, 300])),
        hysteresis_c=draw(st.sampled_from([0.0, 0.0, 0.5, 1.0])),
        resolve_hold_s=draw(st.sampled_from([0, 0, 60, 600])),
        rate_of_change_c_per_min=draw(st.sampled_from([None, 0.05, 1.0])),
        humidity_limits=(
            HumidityLimit(id="RH-H", side="high", threshold_pct=70.0, delay_s=120),
            HumidityLimit(id="RH-L", side="low", threshold_pct=20.0, inclusive=True),
        ),
        humidity_hysteresis_pct=5.0,
        mkt_limits=(
            MktLimit(id="MKT-24h", window="24h", max_c=6.0),
            MktLimit(id="MKT-trip", window="trip", max_c=5.0, min_coverage_s=3600),
        ),
    )


@st.composite
def sensor_series(draw: st.DrawFn) -> SensorSeries:
    temps = draw(values_st)
    steps = draw(steps_st)[: len(temps)]
    scale = draw(st.sampled_from([1_000, 60_000]))  # seconds → ms, or minutes → ms (long series)
    # an hour-aligned start, so readings often fall exactly on MKT boundaries
    t = np.cumsum(np.asarray(steps, dtype=np.int64) * scale) + 1_699_999_200_000
    n = len(temps)
    rh = np.asarray(draw(st.lists(st.sampled_from([10.0, 20.0, 50.0, 72.0, np.nan]),
                                  min_size=n, max_size=n)))
    door = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return SensorSeries(t, np.asarray(temps), rh, door)


def split(s: SensorSeries, cuts: list[int]) -> list[SensorSeries]:
    bounds = sorted({0, len(s), *(c % (len(s) + 1) for c in cuts)})
    return [
        SensorSeries(
            s.times_ms[a:b], s.temps_c[a:b],
            None if s.rh_pct is None else s.rh_pct[a:b],
            None if s.door_open is None else s.door_open[a:b],
        )
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]


def run_in_batches(
    batches: list[SensorSeries], profile: AlarmProfile, *, restart: bool
) -> tuple[list[Excursion], EngineState]:
    state = EngineState()
    snapshots = []
    for batch in batches:
        if restart:  # what a worker restart does: the state goes through JSON and back
            state = EngineState.from_dict(json.loads(json.dumps(state.to_dict())))
        result = evaluate(batch, profile, state)
        snapshots.append(result.excursions)
        state = result.state
    return fold_excursions(snapshots), state


# --- properties -------------------------------------------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(sensor_series(), profiles())
def test_single_and_cumulative_equal_the_reference_loop(s: SensorSeries, p: AlarmProfile) -> None:
    result = evaluate(s, p)
    expected, beyond = reference(
        s.times_ms.tolist(), s.temps_c.tolist(), p,
        None if s.door_open is None else s.door_open.tolist(),
    )
    assert engine_view(result.excursions) == reference_view(expected)
    for limit_id, ms in beyond.items():
        assert result.state.time_beyond_s(limit_id) == ms / 1000.0


@SETTINGS
@given(sensor_series(), profiles(), st.lists(st.integers(0, 200), max_size=8), st.booleans())
def test_any_split_and_restart_equals_one_pass(
    s: SensorSeries, p: AlarmProfile, cuts: list[int], restart: bool
) -> None:
    whole = evaluate(s, p)
    folded, state = run_in_batches(split(s, cuts), p, restart=restart)
    assert folded == fold_excursions([whole.excursions])
    assert state.to_dict() == whole.state.to_dict()


@SETTINGS
@given(sensor_series(), profiles(), st.lists(st.integers(0, 200), max_size=6), st.randoms())
def test_batches_in_any_arrival_order_equal_one_pass(
    s: SensorSeries, p: AlarmProfile, cuts: list[int], rnd: object
) -> None:
    batches = split(s, cuts)
    batches += batches[:1]  # a redelivered batch
    rnd.shuffle(batches)  # type: ignore[attr-defined]
    assert evaluate_batches(batches, p).excursions == evaluate(s, p).excursions


@settings(max_examples=100, deadline=None)
@given(sensor_series(), profiles(), st.integers(1, 119))
def test_late_data_re_evaluated_from_a_checkpoint_equals_one_pass(
    s: SensorSeries, p: AlarmProfile, cut: int
) -> None:
    head, tail = split(s, [cut])[0], split(s, [cut])[-1]
    if len(head) == len(s):
        return
    checkpoint = evaluate(head, p)
    # the tail arrives in reverse order, one reading at a time
    late = [split(tail, list(range(len(tail))))[i] for i in reversed(range(len(tail)))]
    redone = evaluate_batches(late, p, checkpoint.state)
    assert fold_excursions([checkpoint.excursions, redone.excursions]) == fold_excursions(
        [evaluate(s, p).excursions]
    )


# --- known cases ------------------------------------------------------------------------------


def who() -> AlarmProfile:
    return get_preset("who-pqs-30day")


@pytest.mark.parametrize(
    ("value", "minutes", "fires"),
    [(8.0, 600, True), (7.99, 600, False), (8.0, 599, False), (8.01, 600, True)],
)
def test_who_pqs_heat_is_inclusive_and_10_hours_exactly(
    value: float, minutes: int, fires: bool
) -> None:
    temps = [5.0] * 30 + [value] * minutes + [5.0] * 30
    xs = [x for x in evaluate(series(temps), who()).excursions if x.limit_id == "H1"]
    assert bool(xs) is fires
    if fires:
        assert xs[0].start_ms == 30 * MIN
        assert xs[0].raised_ms == 30 * MIN + 10 * HOUR
        assert xs[0].end_ms == (30 + minutes) * MIN
        assert xs[0].peak_value == value


@pytest.mark.parametrize(
    ("value", "minutes", "fires"), [(-0.5, 60, True), (-0.49, 60, False), (-0.5, 59, False)]
)
def test_who_pqs_freeze_is_inclusive_and_60_minutes(
    value: float, minutes: int, fires: bool
) -> None:
    temps = [4.0] * 10 + [value] * minutes + [4.0] * 10
    xs = [x for x in evaluate(series(temps), who()).excursions if x.limit_id == "L1"]
    assert bool(xs) is fires


def test_who_pqs_heat_can_be_cumulative() -> None:
    from coldchain.presets import who_pqs_30day

    profile = who_pqs_30day(heat_mode="cumulative")
    # 5 h + 5 h at 8 °C, apart: never 10 h in a row, but 10 h in total
    temps = ([8.0] * 300 + [5.0] * 60) * 2 + [5.0]
    single = [x for x in evaluate(series(temps), who()).excursions if x.limit_id == "H1"]
    cumulative = evaluate(series(temps), profile)
    assert single == []
    (x,) = [x for x in cumulative.excursions if x.limit_id == "H1"]
    assert x.kind is ExcursionKind.CUMULATIVE
    assert x.raised_ms == (300 + 60 + 300) * MIN
    assert x.duration_s == 10 * 3600
    assert cumulative.state.time_beyond_s("H1") == 10 * 3600


def test_who_shipping_indicator_thresholds() -> None:
    profile = get_preset("who-shipping-indicator-1")
    temps = [20.0] * 10 + [45.0] * 60 + [30.0] * 541 + [20.0] * 5
    xs = {x.limit_id: x for x in evaluate(series(temps), profile).excursions}
    assert xs["H1"].kind is ExcursionKind.SINGLE and xs["H1"].raised_ms == 70 * MIN
    # ≥ 30 °C counts the 45 °C hour too: 60 + 540 minutes = 10 h reached at minute 610
    assert xs["H2"].kind is ExcursionKind.CUMULATIVE and xs["H2"].raised_ms == 610 * MIN
    assert "L1" not in xs


def test_hovering_at_a_limit_is_one_excursion() -> None:
    limit = Limit(id="H1", side="high", threshold_c=8.0, single_event_delay_s=0)
    profile = one_limit(limit, hysteresis_c=0.5, resolve_hold_s=600)
    temps = [5.0] * 5 + [8.1, 7.9] * 50 + [7.0] * 20
    xs = evaluate(series(temps), profile).excursions
    assert len(xs) == 1
    assert xs[0].start_ms == 5 * MIN
    assert xs[0].end_ms == 104 * MIN  # back inside after the last 8.1
    assert xs[0].resolved_ms == 105 * MIN + 600_000  # 10 min inside the 7.5 °C band
    # Without hysteresis and hold every dip is a new episode.
    storm = evaluate(series(temps), one_limit(limit)).excursions
    assert len(storm) == 50


def test_open_excursion_carries_across_batches_and_closes_later() -> None:
    limit = Limit(id="H1", side="high", threshold_c=8.0, single_event_delay_s=1800)
    profile = one_limit(limit, resolve_hold_s=300)
    first = evaluate(series([9.0] * 40), profile)
    (x,) = first.excursions
    assert x.is_open and x.raised_ms == 30 * MIN and x.duration_s == 39 * 60
    second = evaluate(series([5.0] * 10, start_ms=40 * MIN), profile, first.state)
    (y,) = second.excursions
    assert y.key == x.key and y.end_ms == 40 * MIN and y.resolved_ms == 45 * MIN


def test_start_delay_and_door_tolerance_excuse_time_beyond() -> None:
    limit = Limit(id="H1", side="high", threshold_c=8.0, cumulative_budget_s=3600)
    profile = one_limit(limit, start_delay_s=600, door_open_tolerance_s=300)
    temps = [12.0] * 20 + [5.0] * 10 + [12.0] * 10 + [5.0]
    door = [False] * 30 + [True] * 10 + [False]
    t = np.arange(len(temps), dtype=np.int64) * MIN
    result = evaluate(SensorSeries(t, np.asarray(temps), door_open=np.asarray(door)), profile)
    # 10 of the first 20 minutes are inside the start delay; the door excuses 5 of the last 10
    assert result.state.time_beyond_s("H1") == (10 + 5) * 60


def test_dual_boundary_shares_one_budget() -> None:
    profile = AlarmProfile(
        id="p", version=1, name="dual",
        limits=(
            Limit(id="H1", side="high", threshold_c=8.0, cumulative_budget_s=3600,
                  budget_group="OUT"),
            Limit(id="L1", side="low", threshold_c=2.0, cumulative_budget_s=3600,
                  budget_group="OUT"),
        ),
    )
    temps = [10.0] * 30 + [5.0] * 10 + [-1.0] * 30 + [5.0]
    result = evaluate(series(temps), profile)
    (x,) = result.excursions
    assert (x.limit_id, x.kind, x.raised_ms) == ("OUT", ExcursionKind.CUMULATIVE, 70 * MIN)
    assert x.peak_value == -1.0  # 3 °C below the low limit is farther out than 2 °C above
    assert result.state.time_beyond_s("OUT") == 3600


def test_rate_of_change() -> None:
    profile = AlarmProfile(
        id="p", version=1, name="roc",
        limits=(Limit(id="H1", side="high", threshold_c=50.0, single_event_delay_s=0),),
        rate_of_change_c_per_min=1.0,
    )
    temps = [5.0, 5.5, 6.0, 9.0, 12.0, 12.5, 12.5]
    (x,) = evaluate(series(temps), profile).excursions
    assert (x.kind, x.start_ms, x.end_ms, x.peak_value) == (
        ExcursionKind.RATE, 3 * MIN, 5 * MIN, 3.0
    )


def test_mkt_window_excursion() -> None:
    profile = AlarmProfile(
        id="p", version=1, name="mkt",
        limits=(Limit(id="H1", side="high", threshold_c=50.0, single_event_delay_s=0),),
        mkt_limits=(MktLimit(id="M", window="24h", max_c=8.0),),
    )
    # 2 days at 5 °C, 6 h at 25 °C, 2 days at 5 °C, hourly readings
    temps = [5.0] * 48 + [25.0] * 6 + [5.0] * 48
    (x,) = evaluate(series(temps, step_ms=HOUR), profile).excursions
    assert x.kind is ExcursionKind.MKT
    assert 48 * HOUR < x.start_ms <= 54 * HOUR
    # at 77 h the window [53 h, 77 h) holds one warm hour: MKT 7.7 °C, no longer above 8 °C
    assert x.end_ms == 77 * HOUR
    assert x.peak_value > 8.0


def test_rejects_unsorted_late_and_foreign_state() -> None:
    profile = who()
    with pytest.raises(ValidationError, match="strictly increasing"):
        SensorSeries(np.array([2, 1], np.int64), np.array([5.0, 5.0]))
    state = evaluate(series([5.0] * 10), profile).state
    with pytest.raises(ValidationError, match="already evaluated"):
        evaluate(series([5.0], start_ms=5 * MIN), profile, state)
    with pytest.raises(ValidationError, match="belongs to profile"):
        evaluate(series([5.0], start_ms=20 * MIN), get_preset("2-8C"), state)
    with pytest.raises(ValidationError, match="finite"):
        SensorSeries(np.array([1], np.int64), np.array([np.nan]))
    with pytest.raises(ValidationError, match="same time"):
        merge_batches([series([5.0]), series([6.0])])
