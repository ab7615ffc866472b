"""Partner isolation over HTTP: a hospital's users see exactly the shipment shared with them and
what its scope names (lot, readings, alerts, acknowledge), and 404 for everything beyond."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.domain import Severity
from coldchain.settings import Settings
from storage import alerts, auth, registry
from storage.db import open_pool
from tests.support.identity import bearer, make_user
from tests.support.lots import GTIN, add_leg, write_readings


def _alert(db: psycopg.Connection, shipment: str, device: str) -> int:
    ship = registry.get_shipment(db, org=1, shipment_id=shipment).key
    dev = db.execute("SELECT key FROM devices WHERE id = %s", (device,)).fetchone()
    assert dev is not None
    with db.transaction():
        alert_id, _ = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key=f"e:{shipment}",
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C",
                shipment_key=ship,
                device_key=int(dev[0]),
            ),
        )
    return alert_id


@pytest.fixture
def world(
    db_dsn: str, db: psycopg.Connection
) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], dict[str, int]]]:
    add_leg(db, "S1", ["D1"], 0, 600)
    add_leg(db, "S2", ["D2"], 600, 1200)  # the same lot on a second shipment, not shared
    write_readings(db, "D1", np.arange(0, 10), np.full(10, 5.0))
    write_readings(db, "D2", np.arange(600, 610), np.full(10, 6.0))
    ids = {"a1": _alert(db, "S1", "D1"), "a2": _alert(db, "S2", "D2")}
    hosp = auth.create_organization(db, "hosp-b", "Hospital B")
    make_user(db, "nurse@hosp.org", ["driver"], org=hosp)
    make_user(db, "boss@hosp.org", ["admin"], org=hosp)
    owner = {
        "Authorization": "Bearer " + auth.create_token(db, org=1, name="ops", role=Role.LOGISTICS, actor="t")
    }
    with (
        open_pool(db_dsn, max_size=4) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as c,
    ):
        yield (
            c,
            {"owner": owner, "nurse": bearer(c, "nurse@hosp.org"), "boss": bearer(c, "boss@hosp.org")},
            ids,
        )


def _codes(client: TestClient, h: dict[str, str], ids: dict[str, int]) -> dict[str, int]:
    return {
        "shipment": client.get("/api/v1/shipments/S1", headers=h).status_code,
        "other_shipment": client.get("/api/v1/shipments/S2", headers=h).status_code,
        "lot": client.get(f"/api/v1/lots/{GTIN}/A1", headers=h).status_code,
        "readings": client.get(f"/api/v1/lots/{GTIN}/A1/readings", headers=h).status_code,
        "alert": client.get(f"/api/v1/alerts/{ids['a1']}", headers=h).status_code,
        "other_alert": client.get(f"/api/v1/alerts/{ids['a2']}", headers=h).status_code,
        "device": client.get("/api/v1/devices/D1", headers=h).status_code,
    }


def test_partners_see_exactly_what_is_shared(
    world: tuple[TestClient, dict[str, dict[str, str]], dict[str, int]],
) -> None:
    client, h, ids = world
    nothing = dict.fromkeys(
        ("shipment", "other_shipment", "lot", "readings", "alert", "other_alert", "device"), 404
    )
    assert _codes(client, h["nurse"], ids) == nothing
    assert client.get("/api/v1/shipments", headers=h["nurse"]).json() == []
    assert client.get("/api/v1/alerts", headers=h["nurse"]).json() == []

    body = {"organization": "hosp-b", "scope": ["readings", "alerts", "acknowledge"]}
    res = client.post("/api/v1/shipments/S1/shares", json=body, headers=h["owner"])
    assert res.status_code == 201, res.text
    assert (
        client.post(
            "/api/v1/shipments/S1/shares", json={**body, "scope": ["gossip"]}, headers=h["owner"]
        ).status_code
        == 422
    )
    assert (
        client.post(
            "/api/v1/shipments/S1/shares", json={**body, "organization": "nope"}, headers=h["owner"]
        ).status_code
        == 404
    )
    # The partner cannot share the owner's shipment onwards.
    assert client.post("/api/v1/shipments/S1/shares", json=body, headers=h["boss"]).status_code == 404

    assert _codes(client, h["nurse"], ids) == {
        **nothing,
        "shipment": 200,
        "lot": 200,
        "readings": 200,
        "alert": 200,
    }
    [listed] = client.get("/api/v1/shipments", headers=h["nurse"]).json()
    assert (listed["id"], listed["shared_by"], listed["scope"]) == (
        "S1",
        "default",
        ["acknowledge", "alerts", "readings"],
    )
    lot = client.get(f"/api/v1/lots/{GTIN}/A1", headers=h["nurse"]).json()
    assert (lot["shipments"], lot["devices"]) == (["S1"], ["D1"])
    assert [a["id"] for a in lot["excursions"]] == [ids["a1"]] and lot["stability_budget_credits"] == []
    assert lot["disposition"] is None  # QA's decisions stay the owner's, as its credits do
    readings = client.get(f"/api/v1/lots/{GTIN}/A1/readings", headers=h["nurse"]).json()["readings"]
    assert len(readings) == 10 and {r["c"] for r in readings} == {5.0}  # none of S2's 6.0 °C
    assert [a["id"] for a in client.get("/api/v1/alerts", headers=h["nurse"]).json()] == [ids["a1"]]
    # Acknowledge is in scope; resolving is not (404: beyond the share).
    res = client.post(f"/api/v1/alerts/{ids['a1']}/ack", json={"comment": "seen on ward"}, headers=h["nurse"])
    assert res.status_code == 200 and res.json()["acknowledged_by"] == "nurse@hosp.org"
    assert client.post(f"/api/v1/alerts/{ids['a1']}/resolve", json={}, headers=h["boss"]).status_code == 404
    assert client.post(f"/api/v1/alerts/{ids['a2']}/ack", json={}, headers=h["nurse"]).status_code == 404
    assert client.get("/api/v1/devices", headers=h["nurse"]).json() == []

    # A narrower scope: the shipment only.
    client.post("/api/v1/shipments/S1/shares", json={**body, "scope": []}, headers=h["owner"])
    assert _codes(client, h["nurse"], ids) == {**nothing, "shipment": 200, "lot": 200}
    assert client.get(f"/api/v1/lots/{GTIN}/A1", headers=h["nurse"]).json()["excursions"] == []
    # Revoked: nothing again.
    assert client.delete("/api/v1/shipments/S1/shares/hosp-b", headers=h["owner"]).status_code == 204
    assert _codes(client, h["nurse"], ids) == nothing
