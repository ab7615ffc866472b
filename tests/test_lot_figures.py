"""A lot's figures across legs and loggers, through the API: MKT, time beyond each limit and the
remaining stability budget, computed by the same engine that raises the alerts."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from coldchain.access import Role
from storage import auth
from tests.support.api import api_client
from tests.support.lots import GTIN, add_leg, write_readings


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection) -> Iterator[TestClient]:
    token = auth.create_token(db, org=1, name="qa", role=Role.QA, actor="t")
    with api_client(db_dsn, token=token, pool_size=2) as c:
        yield c


def test_mkt_known_answer_across_two_legs(client: TestClient, db: psycopg.Connection) -> None:
    # Leg 1: 18 h at 5 °C; leg 2: 6 h at 14 °C — MKT 8.29 °C (USP <1160> worked check).
    add_leg(db, "LEG-1", ["T1"], 0, 18 * 60)
    add_leg(db, "LEG-2", ["T2"], 18 * 60, 24 * 60)
    write_readings(db, "T1", np.arange(0, 18 * 60), np.full(18 * 60, 5.0))
    write_readings(db, "T2", np.arange(18 * 60, 24 * 60), np.full(6 * 60, 14.0))
    lot = client.get(f"/api/v1/lots/{GTIN}/A1").json()
    assert lot["mkt_c"] == pytest.approx(8.29, abs=0.01)
    # 6 h beyond H1 (8 °C) less the profile's 10-minute start delay of the leg's logger, and the
    # last reading standing for no time yet: 349 minutes.
    assert lot["time_out_of_range_s"]["H1"] == 349 * 60
    assert lot["time_out_of_range_s"]["L1"] == 0
    assert lot["stability_budget_remaining_s"] == 72 * 3600 - 349 * 60


def test_the_worst_logger_of_a_leg_counts(client: TestClient, db: psycopg.Connection) -> None:
    add_leg(db, "LEG-1", ["A", "B"], 0, 600)
    warm = np.full(120, 5.0)
    warm[30:90] = 10.0
    write_readings(db, "A", np.arange(120), np.full(120, 5.0))
    write_readings(db, "B", np.arange(120), warm)
    lot = client.get(f"/api/v1/lots/{GTIN}/A1").json()
    assert lot["worst_logger_per_shipment"] == {"LEG-1": "B"}
    assert lot["time_out_of_range_s"]["H1"] == 60 * 60
    assert lot["outside_labelled_range_s"] == 60 * 60
