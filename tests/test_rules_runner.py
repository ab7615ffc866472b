"""The rules runner against a real PostgreSQL: queued work -> alerts, exactly once per episode,
whatever the batching, restarts or late data; silence raises a no-data alert and clears."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from rules.device_health import check_silence
from rules.runner import drain
from storage import registry, rule_queue
from storage.readings import ReadingRows, copy_rows
from tests.support.devices import known_devices

T0 = int(datetime(2026, 11, 24, 8, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000


def _setup(db: psycopg.Connection) -> tuple[int, int]:
    registry.create_device(db, org=1, device=Device(id="TRK-1"), actor="t")
    start = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    registry.create_shipment(
        db,
        org=1,
        profile_version=1,
        actor="t",
        shipment=Shipment(
            id="SO-1",
            profile="2-8C",
            lots=(ShipmentLot(Lot("09506000134352", "A1")),),
            devices=(DeviceAssignment("TRK-1", start),),
        ),
    )
    dev = known_devices(db, ["TRK-1"])["TRK-1"]
    return dev.key, dev.assignments[0].shipment_key


def _trip() -> np.ndarray:
    """Four hours at 5 °C with a 45-minute door-open excursion to 11 °C in the middle."""
    c = np.full(240, 5.0)
    c[100:145] = 11.0
    return c


def _write(db: psycopg.Connection, dev: int, shp: int, idx: np.ndarray, temps: np.ndarray) -> None:
    t = T0 + idx.astype(np.int64) * MIN
    n = len(idx)
    with db.transaction():
        copy_rows(
            db,
            ReadingRows(
                org_id=np.ones(n, np.int16),
                device_key=np.full(n, dev, np.int32),
                shipment_key=np.full(n, shp, np.int32),
                seq=np.zeros(n, np.int64),
                t_ms=t,
                celsius=temps[idx].astype(np.float32),
                rh=np.full(n, np.nan, np.float32),
                flags=np.zeros(n, np.int16),
            ),
        )
        db.execute(
            "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, min_c, max_c)"
            " VALUES (1, %s, %s, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), %s, %s)",
            (dev, shp, int(t.min()), int(t.max()), float(temps[idx].min()), float(temps[idx].max())),
        )


def _alerts(db: psycopg.Connection) -> list[tuple[str, str, str, float | None]]:
    return [
        (r[0], r[1], r[2], None if r[3] is None else round(float(r[3]), 1))
        for r in db.execute("SELECT kind, limit_id, state, peak_c FROM alerts ORDER BY id").fetchall()
    ]


def test_one_pass_raises_one_alert_and_auto_resolves(db: psycopg.Connection) -> None:
    dev, shp = _setup(db)
    _write(db, dev, shp, np.arange(240), _trip())
    drain(db)
    got = _alerts(db)
    assert got == [("single", "H1", "resolved", 11.0)]
    events = db.execute("SELECT action, actor FROM alert_events ORDER BY id").fetchall()
    assert events == [("open", "rules"), ("resolve", "rules")]


@pytest.mark.parametrize("splits", [[10, 101, 120, 144, 146, 200], [1, 2, 3, 239], list(range(5, 240, 7))])
def test_batches_and_restarts_give_the_same_alerts(db_dsn: str, splits: list[int]) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as db:
        dev, shp = _setup(db)
        whole = _trip()
        for lo, hi in zip([0, *splits], [*splits, 240], strict=True):
            _write(db, dev, shp, np.arange(lo, hi), whole)
            # A fresh connection each time: a restarted worker resumes from the stored state.
            with psycopg.connect(db_dsn, autocommit=True) as worker:
                drain(worker)
        assert _alerts(db) == [("single", "H1", "resolved", 11.0)]


def test_late_data_is_reevaluated_as_one_pass(db: psycopg.Connection) -> None:
    dev, shp = _setup(db)
    whole = _trip()
    idx = np.arange(240)
    late = (idx >= 90) & (idx < 150)
    _write(db, dev, shp, idx[~late], whole)  # a gap where the excursion was
    drain(db)
    assert _alerts(db) == []
    _write(db, dev, shp, idx[late], whole)  # the truck's back-filled hour arrives
    stats = drain(db)
    assert stats.reevaluated == 1
    assert _alerts(db) == [("single", "H1", "resolved", 11.0)]


def test_silence_raises_and_clears(db: psycopg.Connection) -> None:
    dev, _ = _setup(db)
    now = T0 + 30 * MIN
    db.execute("UPDATE devices SET last_seen_at = to_timestamp(%s / 1000.0) WHERE key = %s", (now, dev))
    assert check_silence(db, now_ms=now + 4 * MIN) == (0, 0)
    assert check_silence(db, now_ms=now + 11 * MIN) == (1, 0)
    assert check_silence(db, now_ms=now + 12 * MIN) == (0, 0)  # one alert per silence
    db.execute(
        "UPDATE devices SET last_seen_at = to_timestamp(%s / 1000.0) WHERE key = %s", (now + 13 * MIN, dev)
    )
    assert check_silence(db, now_ms=now + 13 * MIN) == (0, 1)
    assert [a[0] for a in _alerts(db)] == ["no_data"]


def test_quiet_series_wait_for_the_bulk_pass_but_are_never_skipped(db: psycopg.Connection) -> None:
    dev, shp = _setup(db)
    whole = _trip()
    _write(db, dev, shp, np.arange(0, 60), whole)
    drain(db)  # the first evaluation of a series always runs
    _write(db, dev, shp, np.arange(60, 90), whole)  # quiet readings
    assert drain(db, fast_lane=True).series == 0  # quiet: left for the bulk pass
    assert db.execute("SELECT count(*) FROM rule_queue").fetchone() == (1,)
    _write(db, dev, shp, np.arange(90, 110), whole)  # the door opens at minute 100
    fast = drain(db, fast_lane=True)
    assert fast.series == 1 and fast.readings == 50  # hot: at once, with the quiet backlog
    assert db.execute("SELECT count(*) FROM rule_queue").fetchone() == (0,)
    _write(db, dev, shp, np.arange(110, 240), whole)
    drain(db, fast_lane=True)
    drain(db)  # the bulk pass
    assert _alerts(db) == [("single", "H1", "resolved", 11.0)]
    assert db.execute("SELECT count(*) FROM rule_queue").fetchone() == (0,)


def test_readings_committed_after_a_claim_wait_for_their_own_work(db: psycopg.Connection) -> None:
    from rules.runner import RunStats, evaluate_many

    dev, shp = _setup(db)
    whole = _trip()
    _write(db, dev, shp, np.arange(0, 60), whole)
    row = db.execute("SELECT max(id) FROM rule_queue").fetchone()
    assert row is not None
    head = int(row[0])
    _write(db, dev, shp, np.arange(60, 120), whole)  # commits while the pass below runs
    with db.transaction():
        claimed = rule_queue.take_work(db, up_to=head)
        evaluate_many(db, claimed, RunStats())
    state = db.execute("SELECT last_ms FROM rule_series_state").fetchone()
    assert state == (T0 + 59 * MIN,)  # the claimed range only, not the newer readings
    assert drain(db).reevaluated == 0  # their own row then continues the series: no restart
    _write(db, dev, shp, np.arange(120, 240), whole)
    assert drain(db).reevaluated == 0
    assert _alerts(db) == [("single", "H1", "resolved", 11.0)]


def test_one_bad_series_does_not_hold_up_the_others(db: psycopg.Connection) -> None:
    dev, shp = _setup(db)
    registry.create_device(db, org=1, device=Device(id="TRK-2"), actor="t")
    start = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    registry.create_shipment(
        db,
        org=1,
        profile_version=1,
        actor="t",
        shipment=Shipment(id="SO-2", profile="2-8C", devices=(DeviceAssignment("TRK-2", start),)),
    )
    other = known_devices(db, ["TRK-2"])["TRK-2"]
    db.execute("UPDATE shipments SET profile_id = 'withdrawn' WHERE id = 'SO-2'")  # cannot resolve
    whole = _trip()
    _write(db, dev, shp, np.arange(240), whole)
    _write(db, other.key, other.assignments[0].shipment_key, np.arange(240), whole)
    drain(db)
    assert _alerts(db) == [("single", "H1", "resolved", 11.0)]  # the healthy series went through
    states = db.execute("SELECT device_key FROM rule_series_state").fetchall()
    assert states == [(dev,)]  # the bad one saved nothing: its next batch covers these readings
