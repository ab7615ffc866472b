"""Door, light and shock rules: the profile fields, the engine's episodes (batch boundaries and
state round trips change nothing), and the whole way through the runner to alerts and evidence."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import orjson
import psycopg
import pytest

from coldchain.alarm_profile import AlarmProfile, LightWindow
from coldchain.domain import Device, DeviceAssignment, Lot, Severity, Shipment, ShipmentLot
from coldchain.errors import ValidationError
from coldchain.excursion import ExcursionKind
from coldchain.presets import get_preset
from evidence.epcis import epcis_document
from evidence.model import shipment_evidence
from rules.engine import EngineState, SensorSeries, evaluate, fold_excursions
from rules.runner import drain
from storage import profiles, registry
from storage.readings import FLAG_DOOR_OPEN, FLAG_LIGHT, ReadingRows, copy_rows
from tests.support.devices import known_devices

T0 = int(datetime(2026, 11, 24, 0, tzinfo=UTC).timestamp() * 1000)  # midnight UTC
MIN = 60_000
N = 24 * 60  # a day of one-minute readings


def _profile(**handling: object) -> AlarmProfile:
    base = get_preset("2-8C").to_dict()
    base.update(id="handling", start_delay_s=0, **handling)
    return AlarmProfile.from_dict(base)


def _day() -> SensorSeries:
    """A day at 5 °C: the door open 20 min from 02:00 (and 10 min from 05:00), light at 03:00
    (outside the window) and 12:00 (inside), shocks of 3 g at 04:00 and 12 g at 04:30."""
    t = T0 + np.arange(N, dtype=np.int64) * MIN
    c = np.full(N, 5.0)
    door = np.zeros(N, dtype=bool)
    door[120:140] = True
    door[300:310] = True
    c[120:140] = 6.5
    light = np.zeros(N, dtype=bool)
    light[180:183] = True
    light[720:725] = True
    shock = np.full(N, np.nan)
    shock[240] = 3.0
    shock[270] = 12.0
    return SensorSeries(t, c, door_open=door, light=light, shock_g=shock)


PROFILE = _profile(
    door_open_max_min=15,
    light_windows=[{"start_utc": "08:00", "end_utc": "18:00"}],
    shock_max_g=10.0,
    handling_tier="warning",
)


def _handling(excursions: list) -> list[tuple[str, int, int | None, float]]:  # type: ignore[type-arg]
    return [
        (
            x.kind.value, (x.start_ms - T0) // MIN,
            None if x.end_ms is None else (x.end_ms - T0) // MIN, x.peak_value,
        )
        for x in excursions
        if x.kind in (ExcursionKind.DOOR, ExcursionKind.LIGHT, ExcursionKind.SHOCK)
    ]


def test_each_rule_raises_its_own_kind_and_only_beyond_its_limit() -> None:
    result = evaluate(_day(), PROFILE)
    got = _handling(fold_excursions([result.excursions]))
    assert got == [
        ("door", 120, 140, 6.5),  # 20 min > 15; the 10-minute opening raises nothing
        ("light", 180, 183, 5.0),  # 03:00 is outside 08:00-18:00; 12:00 is inside
        ("shock", 270, 271, 12.0),  # 3 g is within the limit
    ]
    door = next(x for x in result.excursions if x.kind is ExcursionKind.DOOR)
    assert door.raised_ms == T0 + (120 + 15) * MIN and door.tier is Severity.WARNING
    assert door.limit_id == "DOOR" and door.duration_s == 20 * 60


def test_batches_and_state_round_trips_give_the_same_excursions() -> None:
    whole = _day()
    one_pass = fold_excursions([evaluate(whole, PROFILE).excursions])
    for cuts in ([1, 125, 130, 181, 270, 271, 900], list(range(7, N, 97))):
        state: EngineState | None = None
        seen = []
        for lo, hi in zip([0, *cuts], [*cuts, N], strict=True):
            part = SensorSeries(
                whole.times_ms[lo:hi], whole.temps_c[lo:hi],
                door_open=None if whole.door_open is None else whole.door_open[lo:hi],
                light=None if whole.light is None else whole.light[lo:hi],
                shock_g=None if whole.shock_g is None else whole.shock_g[lo:hi],
            )
            result = evaluate(part, PROFILE, state)
            seen.append(result.excursions)
            state = EngineState.from_dict(orjson.loads(orjson.dumps(result.state.to_dict())))
        assert fold_excursions(seen) == one_pass


def test_a_window_past_midnight_and_no_windows_at_all() -> None:
    series = _day()
    overnight = _profile(light_windows=[{"start_utc": "22:00", "end_utc": "04:00"}])
    assert [x[:2] for x in _handling(evaluate(series, overnight).excursions)] == [("light", 720)]
    never = _profile(light_windows=[])
    assert [x[:2] for x in _handling(evaluate(series, never).excursions)] == [("light", 180), ("light", 720)]
    # without the rules, the same readings raise nothing of these kinds
    assert _handling(evaluate(series, _profile()).excursions) == []


def test_profile_fields_are_checked_and_round_trip() -> None:
    assert AlarmProfile.from_dict(PROFILE.to_dict()) == PROFILE
    assert PROFILE.light_windows == (LightWindow(start_utc="08:00", end_utc="18:00"),)
    assert "door_open_max_min" not in get_preset("2-8C").to_dict()  # older bodies keep their form
    for bad in (
        {"door_open_max_min": 0},
        {"door_open_max_min": 1.5},
        {"shock_max_g": 0},
        {"light_windows": [{"start_utc": "24:00", "end_utc": "06:00"}]},
        {"light_windows": [{"start_utc": "06:00", "end_utc": "06:00"}]},
        {"light_windows": [{"start_utc": "06:00"}]},
        {"handling_tier": "loud"},
    ):
        with pytest.raises(ValidationError):
            _profile(**bad)
    edge = PROFILE.edge_alarm()
    assert (edge["door_open_max_min"], edge["shock_max_g"]) == (15, 10.0)


@pytest.mark.both_engines
def test_runner_raises_the_alerts_and_the_evidence_carries_them(db: psycopg.Connection) -> None:
    saved = profiles.save(db, org=1, profile=replace(PROFILE, id="handling-db"), actor="qa")
    registry.create_device(db, org=1, device=Device(id="BOX-1"), actor="t")
    registry.create_shipment(
        db, org=1, profile_version=saved.version, actor="t",
        shipment=Shipment(
            id="SO-H", profile="handling-db", lots=(ShipmentLot(Lot("09506000134352", "H1")),),
            devices=(DeviceAssignment("BOX-1", datetime.fromtimestamp(T0 / 1000 - 60, tz=UTC)),),
        ),
    )
    dev = known_devices(db, ["BOX-1"])["BOX-1"]
    shp = dev.assignments[0].shipment_key
    day = _day()
    assert day.door_open is not None and day.light is not None and day.shock_g is not None
    flags = (np.where(day.door_open, FLAG_DOOR_OPEN, 0) | np.where(day.light, FLAG_LIGHT, 0)).astype(np.int16)
    with db.transaction():
        copy_rows(db, ReadingRows(
            org_id=np.ones(N, np.int16), device_key=np.full(N, dev.key, np.int32),
            shipment_key=np.full(N, shp, np.int32), seq=np.zeros(N, np.int64), t_ms=day.times_ms,
            celsius=day.temps_c.astype(np.float32), rh=np.full(N, np.nan, np.float32), flags=flags,
            shock_g=day.shock_g.astype(np.float32),
        ))
        db.execute(
            "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, min_c, max_c)"
            " VALUES (1, %s, %s, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), 5, 6.5)",
            (dev.key, shp, T0, int(day.times_ms[-1])),
        )
    drain(db)
    alerts = db.execute(
        "SELECT kind, limit_id, severity, peak_c, message FROM alerts ORDER BY started_at"
    ).fetchall()
    assert [(a[0], a[1], a[2]) for a in alerts] == [
        ("door", "DOOR", "warning"), ("light", "LIGHT", "warning"), ("shock", "SHOCK", "warning"),
    ]
    assert "door open for 20 min" in alerts[0][4] and "12.0 g" in alerts[2][4]
    ev = shipment_evidence(db, org=1, shipment_id="SO-H")
    kinds = sorted(x["kind"] for leg in ev.legs for x in leg.excursions)
    assert kinds == ["door", "light", "shock"]
    doc = epcis_document(ev)
    reports = [
        r for e in doc["epcisBody"]["eventList"] for s in e.get("sensorElementList", [])
        for r in s["sensorReport"]
    ]
    alarms = {r["type"]: r for r in reports if r.get("exception") == "ALARM_CONDITION"}
    assert set(alarms) == {"Temperature", "Illuminance", "Acceleration"}
    assert alarms["Acceleration"]["maxValue"] == pytest.approx(12.0 * 9.80665, abs=1e-3)
