"""A lot's stability budget kept by the rules across its shipments: the spend stored in PostgreSQL
equals the on-demand figure, running out raises one critical alert, and QA's credit (with a
reason, audited) gives time back and resolves it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.settings import Settings
from rules.runner import drain
from storage import audit, auth
from storage.db import open_pool
from tests.support.identity import login, make_user, signature
from tests.support.lots import GTIN, add_leg, write_readings

BUDGET_S = 2 * 3600


@pytest.fixture
def api(db_dsn: str, db: psycopg.Connection) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A client and an Authorization header value per role (QA is a person: credits are signed)."""
    bearer = {
        "logistics": "Bearer "
        + auth.create_token(db, org=1, name="logistics", role=Role.LOGISTICS, actor="t")
    }
    make_user(db, "qa@example.com", ["qa"])
    with (
        open_pool(db_dsn, max_size=2) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as client,
    ):
        bearer["qa"] = "Bearer " + login(client, "qa@example.com")["access_token"]
        yield client, bearer


def _publish(db: psycopg.Connection, device: str, start_min: int, temps: np.ndarray) -> None:
    write_readings(db, device, start_min + np.arange(len(temps)), temps, queue=True)


def _warm(minutes: int, hot_from: int, hot_minutes: int) -> np.ndarray:
    temps = np.full(minutes, 5.0)
    temps[hot_from : hot_from + hot_minutes] = 10.0
    return temps


def _spent(db: psycopg.Connection) -> float:
    query = "SELECT spent_s FROM lot_budget_state WHERE gtin = %s AND lot = 'A1'"
    row = db.execute(query, (GTIN,)).fetchone()
    return -1.0 if row is None else float(row[0])


def _budget_alerts(db: psycopg.Connection) -> list[tuple[int, str, str, str, str]]:
    return db.execute(
        "SELECT a.id, a.state, a.severity, s.id, d.id FROM alerts a"
        " JOIN shipments s ON s.key = a.shipment_key JOIN devices d ON d.key = a.device_key"
        " WHERE a.kind = 'stability_budget' ORDER BY a.id"
    ).fetchall()


def test_a_lot_running_out_of_budget_across_legs_alerts_once_and_qa_credits_time_back(
    db: psycopg.Connection, api: tuple[TestClient, dict[str, str]]
) -> None:
    client, token = api
    add_leg(db, "LEG-1", ["T1"], 0, 600, budget_s=BUDGET_S)
    add_leg(db, "LEG-2", ["T2", "T3"], 600, 1200, budget_s=BUDGET_S)

    # Leg 1: 90 minutes above 8 °C; 30 minutes of budget left.
    _publish(db, "T1", 0, _warm(300, 100, 90))
    drain(db)
    assert _spent(db) == 90 * 60
    assert _budget_alerts(db) == []

    # Leg 2: two loggers; the worse one (40 min) counts, the other (20 min) does not add to it.
    _publish(db, "T2", 600, _warm(120, 30, 40))
    _publish(db, "T3", 600, _warm(120, 30, 20))
    drain(db)
    assert _spent(db) == (90 + 40) * 60
    [(budget_alert, state, severity, shipment, device)] = _budget_alerts(db)
    assert (state, severity, shipment, device) == ("open", "critical", "LEG-2", "T2")

    lot = client.get(f"/api/v1/lots/{GTIN}/A1", headers={"Authorization": token["qa"]}).json()
    assert lot["outside_labelled_range_s"] == _spent(db)  # stored spend == on-demand figure
    assert lot["stability_budget_remaining_s"] == BUDGET_S - (90 + 40) * 60
    assert budget_alert in {a["id"] for a in lot["excursions"]}

    # More time outside the range on the same episode: still one alert.
    _publish(db, "T2", 720, _warm(60, 0, 15))
    drain(db)
    assert _spent(db) == (90 + 40 + 15) * 60
    assert len(_budget_alerts(db)) == 1

    # Crediting takes QA's permission, a reason, and cannot give back more than was spent.
    leg1_alert = db.execute(
        "SELECT a.id FROM alerts a JOIN shipments s ON s.key = a.shipment_key"
        " WHERE s.id = 'LEG-1' AND a.kind = 'single'"
    ).fetchone()
    assert leg1_alert is not None
    url = f"/api/v1/lots/{GTIN}/A1/credits"
    body = {
        "seconds": 3600,
        "reason": "stability study SR-12 covers 1 h at 10 °C",
        "alert_id": leg1_alert[0],
        "signature": signature("approval"),
    }
    denied = client.post(url, json=body, headers={"Authorization": token["logistics"]})
    assert denied.status_code == 403
    too_much = client.post(url, json={**body, "seconds": 10 * 3600}, headers={"Authorization": token["qa"]})
    assert too_much.status_code == 422 and "spent" in too_much.json()["message"]
    no_reason = client.post(url, json={**body, "reason": ""}, headers={"Authorization": token["qa"]})
    assert no_reason.status_code == 422

    done = client.post(url, json=body, headers={"Authorization": token["qa"]})
    assert done.status_code == 201, done.text
    assert done.json()["resolved_alerts"] == [budget_alert]
    assert done.json()["stability_budget_remaining_s"] == BUDGET_S - (90 + 40 + 15) * 60 + 3600
    assert _budget_alerts(db)[0][1] == "resolved"
    lot = client.get(f"/api/v1/lots/{GTIN}/A1", headers={"Authorization": token["qa"]}).json()
    assert lot["stability_budget_credited_s"] == 3600
    assert [c["reason"] for c in lot["stability_budget_credits"]] == [body["reason"]]
    [entry] = [e for e in audit.trail(db, 1, "lot", f"{GTIN}/A1") if e["action"] == "credit_stability_budget"]
    assert (entry["actor"], entry["reason"]) == ("qa@example.com", body["reason"])
    [credit] = lot["stability_budget_credits"]
    assert [(s["signer"], s["meaning"], s["status"]) for s in credit["signatures"]] == [
        ("Qa", "approval", "valid")
    ]

    # Spending the credited time again opens a new alert: a new episode after the credit.
    _publish(db, "T2", 780, _warm(60, 0, 50))
    drain(db)
    alerts = _budget_alerts(db)
    assert [a[1] for a in alerts] == ["resolved", "open"]


def test_a_lot_without_a_budget_is_tracked_but_never_alerts(db: psycopg.Connection) -> None:
    add_leg(db, "LEG-9", ["T9"], 0, None, lot="NOBUDGET", budget_s=None)
    _publish(db, "T9", 0, _warm(400, 100, 240))
    drain(db)
    row = db.execute("SELECT spent_s FROM lot_budget_state WHERE lot = 'NOBUDGET'").fetchone()
    assert row == (240 * 60,)
    assert _budget_alerts(db) == []


def test_two_workers_on_two_shipments_of_one_lot_both_count(db_dsn: str, db: psycopg.Connection) -> None:
    """Worker B's sum waits for worker A's commit (the lot's lock), so neither leg is lost."""
    from rules.runner import RunStats, evaluate_many
    from storage.rule_queue import SeriesWork

    add_leg(db, "LEG-1", ["T1"], 0, 600, budget_s=BUDGET_S)
    add_leg(db, "LEG-2", ["T2"], 600, 1200, budget_s=BUDGET_S)
    write_readings(db, "T1", np.arange(0, 300), _warm(300, 100, 30))
    write_readings(db, "T2", np.arange(600, 900), _warm(300, 100, 20))
    work = {
        leg: SeriesWork(1, int(dev), int(shp), int(t0), int(t1), False)
        for leg, dev, shp, t0, t1 in db.execute(
            "SELECT s.id, r.device_key, r.shipment_key, (extract(epoch FROM min(r.t)) * 1000)::bigint,"
            " (extract(epoch FROM max(r.t)) * 1000)::bigint FROM readings r"
            " JOIN shipments s ON s.key = r.shipment_key GROUP BY 1, 2, 3"
        ).fetchall()
    }
    with psycopg.connect(db_dsn) as a, psycopg.connect(db_dsn) as b:
        b_pid = b.info.backend_pid
        with a.transaction():
            evaluate_many(a, [work["LEG-1"]], RunStats())
            worker_b = threading.Thread(target=lambda: _evaluate_and_commit(b, work["LEG-2"]))
            worker_b.start()
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline
                and not db.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'advisory'", (b_pid,)
                ).fetchone()
            ):
                time.sleep(0.02)
            assert worker_b.is_alive(), "worker B did not wait for the lot"
        worker_b.join(30)
    assert _spent(db) == (30 + 20) * 60


def _evaluate_and_commit(conn: psycopg.Connection, work: object) -> None:
    from rules.runner import RunStats, evaluate_many

    with conn.transaction():
        evaluate_many(conn, [work], RunStats())  # type: ignore[list-item]
