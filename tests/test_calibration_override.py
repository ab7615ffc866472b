"""QA's signed override of the refusal to assign a logger out of calibration, and each logger's
calibration at the time of its readings in the evidence (real PostgreSQL, both engines)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from api.app import create_app
from coldchain.access import Role
from coldchain.calibration import CalibrationCertificate, CalibrationStatus, periods_over, worst
from coldchain.domain import Device
from coldchain.settings import Settings
from storage import audit, auth, calibrations, registry
from storage.db import open_pool
from tests.support.identity import bearer, make_user, signature
from tests.support.lots import GTIN, add_leg, write_readings

SCHEMA = Path(__file__).parent.parent / "evidence" / "standards" / "EPCIS-JSON-Schema.json"
START = "2026-11-01T00:00:00Z"  # tests.support.lots.T0


def _cert(db: psycopg.Connection, device: str, performed: date, due: date, number: str) -> None:
    with db.transaction():
        calibrations.add_certificate(
            db, org=1, device_id=device, pdf=None, actor="lab@x.org",
            certificate=CalibrationCertificate(
                performed_on=performed, due_on=due, laboratory="Lab A", certificate_number=number
            ),
        )


@pytest.fixture
def client(db_dsn: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data")
    with open_pool(db_dsn, max_size=4) as pool, TestClient(create_app(settings, pool=pool)) as c:
        yield c


@pytest.fixture
def lapsed(db: psycopg.Connection) -> str:
    """A logger whose only certificate was due two weeks before the shipment starts."""
    registry.create_device(db, org=1, device=Device(id="OLD-1"), actor="t")
    _cert(db, "OLD-1", date(2025, 10, 15), date(2026, 10, 15), "K-2025-7")
    return "OLD-1"


def _ship(
    client: TestClient, headers: dict[str, str], override: dict[str, Any] | None, ship: str = "SO-9"
) -> Any:
    assignment: dict[str, Any] = {"id": "OLD-1", "from": START, "to": "2026-11-03T00:00:00Z"}
    if override is not None:
        assignment["calibration_override"] = override
    body = {"id": ship, "lots": [{"gtin": GTIN, "lot": "A1"}], "devices": [assignment]}
    return client.post("/api/v1/shipments", json=body, headers=headers)


def _override(**sig: str) -> dict[str, Any]:
    return {"reason": "no calibrated logger at the site; reference probe read 5.0 °C against 5.1 °C",
            "signature": signature(**{"meaning": "approval", **sig})}


def test_an_override_needs_a_qa_person_and_is_stored_signed_audited_and_shown(
    client: TestClient, db: psycopg.Connection, lapsed: str
) -> None:
    make_user(db, "lee@x.org", ["logistics"])
    make_user(db, "ann@x.org", ["qa", "logistics"], name="Ann Example")
    logistics, qa = bearer(client, "lee@x.org"), bearer(client, "ann@x.org")
    refused = _ship(client, logistics, None)
    assert refused.status_code == 409
    assert "K-2025-7" in refused.json()["message"] and "calibration_override" in refused.json()["message"]
    assert _ship(client, logistics, _override()).status_code == 403  # not QA
    key = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="t")}
    assert _ship(client, key, _override()).status_code == 403  # a machine neither holds qa nor signs
    wrong = _ship(client, qa, _override(password="not the password"))
    assert wrong.status_code == 401
    meaning = _ship(client, qa, _override(meaning="release"))
    assert meaning.status_code == 422
    assert meaning.json()["field"] == "devices.0.calibration_override.signature.meaning"
    assert db.execute("SELECT count(*) FROM calibration_overrides").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM shipments WHERE id = 'SO-9'").fetchone() == (0,)

    done = _ship(client, qa, _override())
    assert done.status_code == 201, done.text
    [assignment] = done.json()["devices"]
    override = assignment["calibration_override"]
    assert (override["certificate_number"], override["due_on"], override["status"]) == (
        "K-2025-7", "2026-10-15", "overdue")
    assert override["overridden_by"] == "ann@x.org" and override["reason"].startswith("no calibrated")
    [sig] = override["signatures"]
    assert (sig["signer"], sig["meaning"], sig["status"], sig["action"]) == (
        "Ann Example", "approval", "valid", "override_calibration")
    assert client.get("/api/v1/shipments/SO-9", headers=qa).json()["devices"] == [assignment]
    trail = audit.trail(db, 1, "device", "OLD-1")
    [entry] = [e for e in trail if e["action"] == "calibration_override"]
    assert entry["new"]["shipment"] == "SO-9" and entry["new"]["certificate_number"] == "K-2025-7"
    assert entry["reason"] == override["reason"]
    # An edit behind the application's back breaks the signature on read.
    db.execute("UPDATE calibration_overrides SET reason = 'fine'")
    [broken] = client.get("/api/v1/shipments/SO-9", headers=qa).json()["devices"][0]["calibration_override"][
        "signatures"]
    assert broken["status"] == "broken"


def test_an_override_is_refused_for_a_logger_that_needs_none(
    client: TestClient, db: psycopg.Connection, lapsed: str
) -> None:
    _cert(db, "OLD-1", date(2026, 10, 20), date(2027, 10, 20), "K-2026-1")  # recalibrated in time
    make_user(db, "ann@x.org", ["qa", "logistics"])
    res = _ship(client, bearer(client, "ann@x.org"), _override())
    assert res.status_code == 422 and "no override is needed" in res.json()["message"]
    assert res.json()["field"] == "devices.0.calibration_override"
    assert db.execute("SELECT count(*) FROM signatures").fetchone() == (0,)


def test_calibration_periods_over_reading_days() -> None:
    a = CalibrationCertificate(performed_on=date(2025, 11, 10), due_on=date(2026, 11, 2),
                               laboratory="Lab A", certificate_number="K-1")
    days = [(date(2026, 11, 1), 10), (date(2026, 11, 2), 5), (date(2026, 11, 3), 7)]
    periods = periods_over([a], days)
    assert [(p.first_day.day, p.last_day.day, p.readings, p.status) for p in periods] == [
        (1, 2, 15, CalibrationStatus.DUE_SOON), (3, 3, 7, CalibrationStatus.OVERDUE)]
    assert worst([p.status for p in periods]) is CalibrationStatus.OVERDUE
    assert [p.status for p in periods_over([], days)] == [CalibrationStatus.NEVER]


@pytest.mark.both_engines  # the evidence reads the readings as each engine stores them
def test_evidence_shows_each_loggers_calibration_at_the_time_of_its_readings(
    client: TestClient, db: psycopg.Connection, lapsed: str
) -> None:
    # L1's certificate runs out during the trip: due soon for two days, then overdue.
    add_leg(db, "LEG-1", ["L1"], 0, 4 * 1440)
    _cert(db, "L1", date(2025, 11, 10), date(2026, 11, 2), "K-L1")
    make_user(db, "ann@x.org", ["qa", "logistics"], name="Ann Example")
    qa = bearer(client, "ann@x.org")
    assert _ship(client, qa, _override(), ship="LEG-2").status_code == 201  # OLD-1 overridden
    minutes = np.arange(0, 4 * 1440, 60)  # hourly for four days
    write_readings(db, "L1", minutes, np.full(minutes.size, 5.0))
    write_readings(db, "OLD-1", np.arange(0, 2 * 1440, 60), np.full(48, 4.0))

    doc = client.get(f"/api/v1/lots/{GTIN}/A1/evidence", headers=qa).json()
    devices = {d["id"]: d for leg in doc["legs"] for d in leg["devices"]}
    l1 = devices["L1"]["calibration_in_force"]
    assert l1["status"] == "overdue" and l1["readings_out_of_calibration"] == 48
    assert [(p["from"], p["to"], p["readings"], p["status"], p["certificate"]["certificate_number"])
            for p in l1["periods"]] == [
        ("2026-11-01", "2026-11-02", 48, "due_soon", "K-L1"),
        ("2026-11-03", "2026-11-04", 48, "overdue", "K-L1"),
    ]
    assert l1["override"] is None
    old = devices["OLD-1"]["calibration_in_force"]
    assert old["status"] == "overdue" and old["readings_out_of_calibration"] == 48
    assert old["override"]["overridden_by"] == "ann@x.org"
    assert old["override"]["signatures"][0]["status"] == "valid"

    pdf = client.get(f"/api/v1/lots/{GTIN}/A1/evidence?format=pdf", headers=qa)
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "K-L1 (Lab A)" in text and "K-2025-7 (Lab A)" in text
    flat = " ".join(text.split())  # table cells wrap
    assert "due soon" in text and "overdue" in text and "no calibrated logger at the site" in flat
    assert "approval" in text  # the override's signature in the signature block

    epcis = client.get(f"/api/v1/lots/{GTIN}/A1/evidence?format=epcis", headers=qa).json()
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()), format_checker=checker)
    assert list(validator.iter_errors(epcis)) == []
    by_device = {e["sensorElementList"][0]["sensorMetadata"]["deviceID"]: e
                 for e in epcis["epcisBody"]["eventList"] if "sensorElementList" in e}
    cal = by_device["urn:coldchain:device:L1"]["cc:calibration"]
    assert cal["cc:status"] == "overdue"
    assert [p["cc:status"] for p in cal["cc:periods"]] == ["due_soon", "overdue"]
    assert "cc:override" in by_device["urn:coldchain:device:OLD-1"]["cc:calibration"]

    zipped = client.get(f"/api/v1/lots/{GTIN}/A1/evidence?format=bundle", headers=qa)
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("calibration.csv").decode())))
    assert [(r["device"], r["status"], r["readings"]) for r in rows] == [
        ("L1", "due_soon", "48"), ("L1", "overdue", "48"), ("OLD-1", "overdue", "48")]
    assert rows[2]["override_by"] == "ann@x.org" and rows[2]["override_signature_hash"].startswith("sha256:")


def test_qa_alone_adds_an_overridden_logger_to_a_registered_shipment(
    client: TestClient, db: psycopg.Connection, lapsed: str
) -> None:
    """Segregation of duties: logistics registers the shipment, QA adds the logger it decided may
    ride; neither can do the other's part."""
    make_user(db, "lee@x.org", ["logistics"])
    make_user(db, "ann@x.org", ["qa"], name="Ann Example")
    logistics, qa = bearer(client, "lee@x.org"), bearer(client, "ann@x.org")
    assert client.post("/api/v1/shipments", headers=logistics,
                       json={"id": "SO-7", "lots": [{"gtin": GTIN, "lot": "A1"}]}).status_code == 201
    url = "/api/v1/shipments/SO-7/devices"
    plain = {"id": "OLD-1", "from": START, "to": "2026-11-03T00:00:00Z"}
    refused = client.post(url, headers=logistics, json=plain)
    assert refused.status_code == 409 and "K-2025-7" in refused.json()["message"]
    overridden = {**plain, "calibration_override": _override()}
    assert client.post(url, headers=logistics, json=overridden).status_code == 403
    assert client.post(url, headers=qa, json=plain).status_code == 403  # QA does not register loggers
    assert client.post("/api/v1/shipments/NOPE/devices", headers=qa,
                       json={**plain, "calibration_override": _override()}).status_code == 404
    done = client.post(url, headers=qa, json={**plain, "calibration_override": _override()})
    assert done.status_code == 201, done.text
    [assignment] = done.json()["devices"]
    assert assignment["id"] == "OLD-1"
    assert assignment["calibration_override"]["signatures"][0]["signer"] == "Ann Example"
    assert [e["action"] for e in audit.trail(db, 1, "shipment", "SO-7")] == ["create", "assign_device"]


def test_the_assignments_route_takes_the_same_override_and_an_overridden_ride_is_not_corrected(
    client: TestClient, db: psycopg.Connection, lapsed: str
) -> None:
    """POST /shipments/{id}/assignments is the same act as POST /shipments/{id}/devices: refused
    without QA's override, QA's alone with it, signed and shown; the window an override's
    signature covers cannot be corrected afterwards (409), nor moved to a lapsed day."""
    make_user(db, "lee@x.org", ["logistics"])
    make_user(db, "ann@x.org", ["qa"], name="Ann Example")
    logistics, qa = bearer(client, "lee@x.org"), bearer(client, "ann@x.org")
    assert client.post("/api/v1/shipments", headers=logistics,
                       json={"id": "SO-8", "lots": [{"gtin": GTIN, "lot": "A1"}]}).status_code == 201
    url = "/api/v1/shipments/SO-8/assignments"
    plain = {"device": lapsed, "from": START, "to": "2026-11-03T00:00:00Z"}
    refused = client.post(url, headers=logistics, json=plain)
    assert refused.status_code == 409 and "K-2025-7" in refused.json()["message"]
    assert "calibration_override" in refused.json()["message"]
    overridden = {**plain, "calibration_override": _override()}
    assert client.post(url, headers=logistics, json=overridden).status_code == 403
    assert client.post(url, headers=qa, json=plain).status_code == 403
    wrong = client.post(url, headers=qa, json={**plain, "calibration_override": _override(password="wrong")})
    assert wrong.status_code == 401
    assert db.execute("SELECT count(*) FROM calibration_overrides").fetchone() == (0,)
    done = client.post(url, headers=qa, json={**plain, "calibration_override": _override()})
    assert done.status_code == 201, done.text
    assert done.headers["ETag"] == '"v1"'
    shown = client.get("/api/v1/shipments/SO-8", headers=logistics).json()
    [assignment] = shown["devices"]
    assert assignment["calibration_override"]["signatures"][0]["signer"] == "Ann Example"
    trail = [e["action"] for e in audit.trail(db, 1, "assignment", str(done.json()["id"]))]
    assert trail == ["assign_device"]
    assert [e["action"] for e in audit.trail(db, 1, "shipment", "SO-8")] == ["create", "assign_device"]
    fixed = client.patch(f"/api/v1/assignments/{done.json()['id']}", headers={**logistics, "If-Match": "*"},
                         json={"to": "2026-11-02T00:00:00Z"})
    assert fixed.status_code == 409 and "override" in fixed.json()["message"]

    # a calibrated logger's window moved onto a day it is out of calibration: 409, naming the
    # certificate (a correction carries no override; QA adds such a ride with one)
    registry.create_device(db, org=1, device=Device(id="NEW-1"), actor="t")
    _cert(db, "NEW-1", date(2025, 11, 5), date(2026, 11, 5), "K-2025-9")
    ride = client.post(url, headers=logistics,
                       json={"device": "NEW-1", "from": "2026-11-02T00:00:00Z", "to": "2026-11-03T00:00:00Z"})
    assert ride.status_code == 201, ride.text
    late = client.patch(f"/api/v1/assignments/{ride.json()['id']}", headers={**logistics, "If-Match": "*"},
                        json={"from": "2026-11-06T00:00:00Z", "to": "2026-11-07T00:00:00Z"})
    assert late.status_code == 409 and "K-2025-9" in late.json()["message"]
    assert client.get(f"/api/v1/assignments/{ride.json()['id']}", headers=logistics).json()["version"] == 1
