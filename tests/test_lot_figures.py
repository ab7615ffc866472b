"""A lot's figures across legs and loggers, through the API: MKT, time beyond each limit and the
remaining stability budget, computed by the same engine that raises the alerts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from coldchain.settings import Settings
from storage import auth, registry
from storage.db import open_pool
from storage.readings import ReadingRows, copy_rows, load_devices

GTIN = "09506000134352"
T0 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection) -> Iterator[TestClient]:
    token = auth.create_token(db, org=1, name="qa", role=Role.QA, actor="t")
    with (
        open_pool(db_dsn, max_size=2) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as c,
    ):
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


def _write(db: psycopg.Connection, device: str, minutes: np.ndarray, temps: np.ndarray) -> None:
    dev = load_devices(db, [device])[device]
    t = T0 + minutes.astype(np.int64) * MIN
    n = len(t)
    with db.transaction():
        copy_rows(
            db,
            ReadingRows(
                org_id=np.ones(n, np.int16),
                device_key=np.full(n, dev.key, np.int32),
                shipment_key=dev.shipments_at(t),
                seq=np.zeros(n, np.int64),
                t_ms=t,
                celsius=temps.astype(np.float32),
                rh=np.full(n, np.nan, np.float32),
                flags=np.zeros(n, np.int16),
            ),
        )


def _leg(db: psycopg.Connection, shipment: str, devices: list[str], start_min: int, end_min: int) -> None:
    start = datetime.fromtimestamp((T0 + start_min * MIN) / 1000, tz=UTC)
    end = datetime.fromtimestamp((T0 + end_min * MIN) / 1000, tz=UTC)
    for d in devices:
        registry.create_device(db, org=1, device=Device(id=d), actor="t")
    registry.create_shipment(
        db,
        org=1,
        profile_version=1,
        actor="t",
        shipment=Shipment(
            id=shipment,
            profile="2-8C",
            lots=(ShipmentLot(Lot(GTIN, "A1", stability_budget_s=72 * 3600)),),
            devices=tuple(DeviceAssignment(d, start, end) for d in devices),
        ),
    )


def test_mkt_known_answer_across_two_legs(client: TestClient, db: psycopg.Connection) -> None:
    # Leg 1: 18 h at 5 °C; leg 2: 6 h at 14 °C — MKT 8.29 °C (USP <1160> worked check).
    _leg(db, "LEG-1", ["T1"], 0, 18 * 60)
    _leg(db, "LEG-2", ["T2"], 18 * 60, 24 * 60)
    _write(db, "T1", np.arange(0, 18 * 60), np.full(18 * 60, 5.0))
    _write(db, "T2", np.arange(18 * 60, 24 * 60), np.full(6 * 60, 14.0))
    lot = client.get(f"/api/v1/lots/{GTIN}/A1").json()
    assert lot["mkt_c"] == pytest.approx(8.29, abs=0.01)
    # 6 h beyond H1 (8 °C) less the profile's 10-minute start delay of the leg's logger, and the
    # last reading standing for no time yet: 349 minutes.
    assert lot["time_out_of_range_s"]["H1"] == 349 * 60
    assert lot["time_out_of_range_s"]["L1"] == 0
    assert lot["stability_budget_remaining_s"] == 72 * 3600 - 349 * 60


def test_the_worst_logger_of_a_leg_counts(client: TestClient, db: psycopg.Connection) -> None:
    _leg(db, "LEG-1", ["A", "B"], 0, 600)
    warm = np.full(120, 5.0)
    warm[30:90] = 10.0
    _write(db, "A", np.arange(120), np.full(120, 5.0))
    _write(db, "B", np.arange(120), warm)
    lot = client.get(f"/api/v1/lots/{GTIN}/A1").json()
    assert lot["worst_logger_per_shipment"] == {"LEG-1": "B"}
    assert lot["time_out_of_range_s"]["H1"] == 60 * 60
    assert lot["outside_labelled_range_s"] == 60 * 60
