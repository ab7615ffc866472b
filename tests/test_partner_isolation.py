"""Partner isolation over HTTP: a hospital's users see exactly the shipment shared with them and
what its scope names (lot, readings and its logger files, alerts, acknowledge, evidence), and 404
for everything beyond."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.field_data import import_and_compare
from coldchain.access import Role
from coldchain.domain import Severity
from coldchain.settings import Settings
from storage import alerts, auth, registry
from storage.db import open_pool
from tests.support.identity import bearer, make_user
from tests.support.lots import GTIN, add_leg, write_readings

LOGGERS = Path(__file__).parent / "data" / "loggers"
LOGGER_FILE = "FridgeTag_2__130400191544_202304201514.txt"


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


def _evidence_codes(
    client: TestClient, h: dict[str, str], ids: dict[str, int], files: dict[str, int]
) -> dict[str, int]:
    return {
        "shipment_evidence": client.get("/api/v1/shipments/S1/evidence", headers=h).status_code,
        "other_shipment_evidence": client.get("/api/v1/shipments/S2/evidence", headers=h).status_code,
        "lot_evidence": client.get(f"/api/v1/lots/{GTIN}/A1/evidence", headers=h).status_code,
        "alert_evidence": client.get(f"/api/v1/alerts/{ids['a1']}/evidence", headers=h).status_code,
        "other_alert_evidence": client.get(f"/api/v1/alerts/{ids['a2']}/evidence", headers=h).status_code,
        "file": client.get(f"/api/v1/logger-files/{files['f1']}", headers=h).status_code,
        "file_original": client.get(f"/api/v1/logger-files/{files['f1']}/original", headers=h).status_code,
        "other_file": client.get(f"/api/v1/logger-files/{files['f2']}", headers=h).status_code,
        "other_file_original": client.get(
            f"/api/v1/logger-files/{files['f2']}/original", headers=h
        ).status_code,
    }


def test_partners_get_the_evidence_and_logger_files_of_what_is_shared_and_nothing_beyond(
    db: psycopg.Connection,
    world: tuple[TestClient, dict[str, dict[str, str]], dict[str, int]],
) -> None:
    client, h, ids = world
    settings = Settings(database_url="postgresql://unused.invalid/x")
    files = {}
    for name, device, shipment in (("f1", "D1", "S1"), ("f2", "D2", "S2")):
        raw = (LOGGERS / LOGGER_FILE).read_bytes() + (b"\n" if name == "f2" else b"")  # two distinct files
        kept = import_and_compare(
            db,
            raw,
            org=1,
            organization="default",
            actor="t",
            settings=settings,
            filename=LOGGER_FILE,
            device_id=device,
            shipment_id=shipment,
        )
        files[name] = kept["id"]
    db.execute(
        "INSERT INTO notify_contacts (org_id, id, name, phone) VALUES (1, 'ops', 'Ops', '+4915100000077')"
    )
    db.execute(
        "INSERT INTO notify_outbox (org_id, idempotency_key, kind, alert_id, contact_id, channel, recipient,"
        " state, due_at, next_attempt_at, created_at, updated_at) VALUES (1, 'k1', 'escalation', %s, 'ops',"
        " 'sms', '+4915100000077', 'sent', now(), now(), now(), now())",
        (ids["a1"],),
    )
    nothing = dict.fromkeys(_evidence_codes(client, h["owner"], ids, files), 404)
    everything = dict.fromkeys(nothing, 200)
    assert _evidence_codes(client, h["owner"], ids, files) == everything
    assert _evidence_codes(client, h["nurse"], ids, files) == nothing

    share = "/api/v1/shipments/S1/shares"
    # "readings": the logger files recorded on the shipment, exactly as uploaded; no evidence.
    client.post(share, json={"organization": "hosp-b", "scope": ["readings"]}, headers=h["owner"])
    assert _evidence_codes(client, h["nurse"], ids, files) == {**nothing, "file": 200, "file_original": 200}
    listed = client.get("/api/v1/logger-files", headers=h["nurse"]).json()
    assert [f["id"] for f in listed] == [files["f1"]]
    assert client.get("/api/v1/logger-files", params={"device": "D2"}, headers=h["nurse"]).json() == []
    original = client.get(f"/api/v1/logger-files/{files['f1']}/original", headers=h["nurse"])
    assert original.content == (LOGGERS / LOGGER_FILE).read_bytes()

    # "evidence": the shipment's evidence and the lot's over the shared leg only; no owner's
    # notifications (its staff and their numbers), no journey-wide budget; not the alert's (that
    # needs "alerts" too); logger files no longer.
    client.post(share, json={"organization": "hosp-b", "scope": ["evidence"]}, headers=h["owner"])
    assert _evidence_codes(client, h["nurse"], ids, files) == {
        **nothing,
        "shipment_evidence": 200,
        "lot_evidence": 200,
    }
    owner_lot = client.get(f"/api/v1/lots/{GTIN}/A1/evidence", headers=h["owner"]).json()
    assert [leg["shipment"]["id"] for leg in owner_lot["legs"]] == ["S1", "S2"]
    lot = client.get(f"/api/v1/lots/{GTIN}/A1/evidence", headers=h["nurse"]).json()
    assert [leg["shipment"]["id"] for leg in lot["legs"]] == ["S1"]
    assert lot["subject"]["shipments"] == ["S1"] and lot["figures"]["stability_budget_credits"] == []
    devices = {d["id"] for leg in lot["legs"] for d in leg["devices"]}
    assert devices == {"D1"}
    temps = {r["c"] for leg in lot["legs"] for d in leg["devices"] for r in d["readings"]}
    assert temps == {5.0}  # none of S2's 6.0 °C
    text = client.get(f"/api/v1/lots/{GTIN}/A1/evidence", params={"format": "csv"}, headers=h["nurse"]).text
    assert "S2" not in text and "D2" not in text
    owner_ship = client.get("/api/v1/shipments/S1/evidence", headers=h["owner"]).json()
    ship = client.get("/api/v1/shipments/S1/evidence", headers=h["nurse"]).json()
    [owner_excursion] = owner_ship["legs"][0]["excursions"]
    [excursion] = ship["legs"][0]["excursions"]
    assert [n["recipient"] for n in owner_excursion["notifications"]] == ["+4915100000077"]
    assert excursion["notifications"] == []
    assert (
        "+4915100000077"
        not in client.get("/api/v1/shipments/S1/evidence", params={"format": "csv"}, headers=h["nurse"]).text
    )
    assert ship["subject"]["lots"][0]["stability_budget_spent_s"] is None
    assert owner_ship["subject"]["lots"][0]["stability_budget_remaining_s"] is not None
    assert (
        client.get("/api/v1/shipments/S1/evidence", params={"format": "pdf"}, headers=h["nurse"]).status_code
        == 200
    )

    # "alerts" and "evidence": the excursion's evidence too, of this shipment's alerts only.
    client.post(share, json={"organization": "hosp-b", "scope": ["alerts", "evidence"]}, headers=h["owner"])
    assert _evidence_codes(client, h["nurse"], ids, files) == {
        **nothing,
        "shipment_evidence": 200,
        "lot_evidence": 200,
        "alert_evidence": 200,
    }
    alert = client.get(f"/api/v1/alerts/{ids['a1']}/evidence", headers=h["nurse"]).json()
    assert [leg["shipment"]["id"] for leg in alert["legs"]] == ["S1"]
    assert alert["legs"][0]["excursions"][0]["notifications"] == []
    # The other organization's own user of the same partner: an admin sees no more than the nurse.
    assert _evidence_codes(client, h["boss"], ids, files) == _evidence_codes(client, h["nurse"], ids, files)

    # Revoked: nothing again.
    assert client.delete("/api/v1/shipments/S1/shares/hosp-b", headers=h["owner"]).status_code == 204
    assert _evidence_codes(client, h["nurse"], ids, files) == nothing
    assert client.get("/api/v1/logger-files", headers=h["nurse"]).json() == []
