"""The lot page, the stability budget the rules keep, and the evidence come from one evaluation:
door tolerance and the profile's ΔH/R included; the 30-day MKT window judged at day 30; and
freeze-thaw cycles counted from the profile's settings."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.alarm_profile import AlarmProfile, FreezeThaw, MktLimit
from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from coldchain.presets import get_preset
from coldchain.settings import Settings
from evidence import model
from rules.engine import SensorSeries, evaluate
from rules.lot_figures import LoggerSeries, freeze_thaw_cycles, logger_figures
from rules.mkt import mean_kinetic_temperature
from rules.runner import drain
from storage import auth, profiles, registry
from storage.db import open_pool
from storage.readings import FLAG_DOOR_OPEN, ReadingRows, copy_rows
from tests.support.devices import known_devices
from tests.support.lots import GTIN, MIN, T0


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection) -> Iterator[TestClient]:
    token = auth.create_token(db, org=1, name="qa", role=Role.QA, actor="t")
    with (
        open_pool(db_dsn, max_size=2) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as c,
    ):
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


def _door_leg(db: psycopg.Connection) -> None:
    """A 2-8 °C profile that excuses 30 minutes of open door; 20 warm minutes with the door open
    (excused) and 15 warm minutes with it shut (counted)."""
    base = get_preset("2-8C")
    profiles.save(db, org=1, profile=dataclasses.replace(base, id="door-2-8C", door_open_tolerance_s=1800),
                  actor="t")
    registry.create_device(db, org=1, device=Device(id="D1"), actor="t")
    registry.create_shipment(
        db, org=1, profile_version=1, actor="t",
        shipment=Shipment(
            id="DOOR-1", profile="door-2-8C",
            lots=(ShipmentLot(Lot(GTIN, "A1", stability_budget_s=72 * 3600)),),
            devices=(DeviceAssignment("D1", datetime.fromtimestamp(T0 / 1000, UTC),
                                      datetime.fromtimestamp(T0 / 1000, UTC) + timedelta(hours=10)),),
        ),
    )
    n = 300
    minutes = np.arange(n)
    temps = np.full(n, 5.0)
    flags = np.zeros(n, np.int16)
    temps[100:120] = 11.0
    flags[100:120] = FLAG_DOOR_OPEN
    temps[200:215] = 11.0
    dev = known_devices(db, ["D1"])["D1"]
    t = T0 + minutes.astype(np.int64) * MIN
    with db.transaction():
        copy_rows(db, ReadingRows(
            org_id=np.ones(n, np.int16), device_key=np.full(n, dev.key, np.int32),
            shipment_key=dev.shipments_at(t), seq=np.zeros(n, np.int64), t_ms=t,
            celsius=temps.astype(np.float32), rh=np.full(n, np.nan, np.float32), flags=flags,
        ))
        db.execute(
            "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, min_c, max_c)"
            " VALUES (1, %s, %s, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), 5, 11)",
            (dev.key, int(dev.shipments_at(t[:1])[0]), int(t[0]), int(t[-1])),
        )
    drain(db)


def test_with_a_door_tolerance_the_lot_page_the_budget_and_the_evidence_agree(
    client: TestClient, db: psycopg.Connection
) -> None:
    _door_leg(db)
    query = "SELECT spent_s FROM lot_budget_state WHERE gtin = %s AND lot = 'A1'"
    row = db.execute(query, (GTIN,)).fetchone()
    assert row is not None and row[0] == 15 * 60  # the rules excused the open door
    lot = client.get(f"/api/v1/lots/{GTIN}/A1").json()
    assert lot["outside_labelled_range_s"] == 15 * 60
    assert lot["time_out_of_range_s"]["H1"] == 15 * 60
    assert lot["stability_budget_remaining_s"] == 72 * 3600 - 15 * 60
    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    assert ev.figures["outside_labelled_range_s"] == 15 * 60
    assert ev.figures["stability_budget_remaining_s"] == lot["stability_budget_remaining_s"]


def test_lot_mkt_uses_the_profiles_delta_h_over_r() -> None:
    profile = dataclasses.replace(
        get_preset("2-8C"), mkt_limits=(MktLimit(id="MKT-trip", window="trip", max_c=25.0,
                                                  delta_h_over_r_k=5_000.0),),
    )
    t = T0 + np.arange(24 * 60, dtype=np.int64) * MIN
    c = np.where(np.arange(t.size) < 18 * 60, 5.0, 14.0)
    f = logger_figures(LoggerSeries("X", t, c), profile)
    assert f.delta_h_over_r_k == 5_000.0
    assert f.mkt_c == pytest.approx(mean_kinetic_temperature(t, c, delta_h_over_r_k=5_000.0), abs=1e-9)
    assert f.mkt_c != pytest.approx(mean_kinetic_temperature(t, c), abs=1e-3)


@pytest.mark.parametrize("start_offset_h", [0, 7, 13])
def test_the_30_day_mkt_window_is_judged_at_day_30(start_offset_h: int) -> None:
    """At the first whole day 30 days after the series began, the window's MKT is judged and
    equals the MKT of those 30 days; an excursion is raised there and not a day later."""
    day = 86_400_000
    t0 = T0 + start_offset_h * 3_600_000
    t = t0 + np.arange(32 * 144, dtype=np.int64) * 600_000
    c = np.full(t.size, 20.0)
    c[:144] = 30.0  # a hot first day
    first = -(-(t0 + 30 * day) // day) * day
    inside = (t >= first - 30 * day) & (t < first)
    expected = mean_kinetic_temperature(t[inside], c[inside], end_ms=first)
    for ceiling, raised in ((expected - 0.005, True), (expected + 0.005, False)):
        profile = dataclasses.replace(
            get_preset("15-25C"), mkt_limits=(MktLimit(id="M30", window="30d", max_c=ceiling),)
        )
        found = [x for x in evaluate(SensorSeries(t, c), profile).excursions if x.limit_id == "M30"]
        if raised:
            assert [x.raised_ms for x in found] == [first]
            assert found[0].peak_value == pytest.approx(expected, abs=1e-9)
        else:
            assert found == []
    f = logger_figures(LoggerSeries("X", t, c), get_preset("15-25C"))
    assert f.mkt_windows["30d"].covered
    assert f.mkt_windows["30d"].max_c >= expected - 1e-9


def _cycles_reference(minutes: np.ndarray, temps: np.ndarray, rule: FreezeThaw) -> int:
    """A plain loop: runs of frozen / thawed / neither, each lasting until the next run starts."""
    runs: list[list[float]] = []  # [class, start minute, end minute]
    for m, v in zip(minutes.tolist(), temps.tolist(), strict=True):
        cls = 1 if v < rule.freeze_below_c else 2 if v > rule.thaw_above_c else 0
        if runs and runs[-1][0] == cls:
            runs[-1][2] = m
            continue
        if runs:
            runs[-1][2] = m
        runs.append([cls, m, m])
    least = {1: rule.min_frozen_s, 2: rule.min_thawed_s}
    events = [c for c, a, b in runs if c in least and (b - a) * 60 >= least[c]]
    return sum(1 for a, b in itertools.pairwise(events) if a == 1 and b == 2)


def test_freeze_thaw_cycles_are_counted_from_the_profile_settings() -> None:
    rule = FreezeThaw(freeze_below_c=0.0, thaw_above_c=2.0, min_frozen_s=1800, min_thawed_s=1800)
    minutes = np.arange(600)
    temps = np.full(600, 5.0)
    temps[50:100] = -3.0  # frozen 50 min, then thawed: cycle 1
    temps[200:210] = -3.0  # frozen only 10 min: not a freeze
    temps[300:340] = -2.0  # frozen 40 min
    temps[340:350] = 1.0  # between: neither frozen nor thawed
    temps[350:360] = 3.0  # thawed only 10 min ...
    temps[360:380] = -1.0  # ... frozen again (still one freeze, no cycle yet)
    # from 380 on, 5 °C for 220 min: thawed, cycle 2
    t = T0 + minutes.astype(np.int64) * MIN
    assert freeze_thaw_cycles(t, temps, rule) == 2 == _cycles_reference(minutes, temps, rule)
    rng = np.random.default_rng(3)
    for _ in range(50):
        walk = np.cumsum(rng.normal(0, 0.6, 400)) + 2
        assert freeze_thaw_cycles(T0 + np.arange(400) * MIN, walk, rule) == _cycles_reference(
            np.arange(400), walk, rule)

    profile = dataclasses.replace(get_preset("2-8C"), id="vaccine", freeze_thaw=rule)
    again = AlarmProfile.from_dict(profile.to_dict())
    assert again.freeze_thaw == rule
    assert "freeze_thaw" not in get_preset("2-8C").to_dict()  # unchanged form for others
    f = logger_figures(LoggerSeries("X", t, temps), profile)
    assert f.freeze_thaw_cycles == 2
    assert logger_figures(LoggerSeries("X", t, temps), get_preset("2-8C")).freeze_thaw_cycles is None


def test_the_edge_alarm_and_the_platform_agree_on_an_exclusive_threshold() -> None:
    """2-8 °C is exclusive on the platform: an hour at exactly 8.0 °C is no excursion there, and
    the driver's local alarm must not sound for it either; 8.1 °C alarms on both."""
    from gateway_agent.alarm import LocalAlarm, LocalProfile
    from gateway_agent.drivers.base import Sample

    preset = get_preset("2-8C")
    for value, alarms in ((8.0, False), (8.1, True)):
        minutes = np.arange(120)
        temps = np.where((minutes >= 20) & (minutes < 100), value, 5.0)
        t = T0 + minutes.astype(np.int64) * MIN
        platform = [x for x in evaluate(SensorSeries(t, temps), preset).excursions if x.limit_id == "H1"]
        edge = LocalAlarm([])
        edge.set_profile("D", LocalProfile.from_dict(preset.to_dict()))
        raised = [e for m, c in zip(t.tolist(), temps.tolist(), strict=True)
                  for e in edge.observe(Sample("D", m, c)) if e.raised and e.limit_id == "H1"]
        assert bool(platform) is alarms
        assert bool(raised) is alarms
        if alarms:
            assert raised[0].t_ms == platform[0].raised_ms
