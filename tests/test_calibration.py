"""Calibration certificates: status on a day, recorded through the API with their PDF, a warning
30 days before due, and an out-of-calibration logger refused for a new shipment (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.calibration import CalibrationCertificate, CalibrationStatus, ReferencePoint, status_on
from coldchain.errors import ValidationError
from coldchain.settings import Settings
from rules.calibration_check import check_calibrations
from storage import auth
from storage.db import open_pool

GTIN = "09506000134352"
DATA = Path(__file__).parent / "data" / "loggers"
def _days(n: int) -> timedelta:
    return timedelta(days=n)


PDF = b"%PDF-1.4\n% calibration certificate\n%%EOF\n"


def _cert(performed: date, due: date, number: str = "K-1") -> CalibrationCertificate:
    return CalibrationCertificate(
        performed_on=performed, due_on=due, laboratory="Lab A", certificate_number=number
    )


def test_status_on_a_day() -> None:
    a = _cert(date(2025, 1, 10), date(2026, 1, 10))
    assert status_on([], date(2025, 6, 1)) == (CalibrationStatus.NEVER, None)
    assert status_on([a], date(2025, 6, 1)) == (CalibrationStatus.CALIBRATED, a)
    assert status_on([a], date(2025, 12, 11))[0] is CalibrationStatus.DUE_SOON
    assert status_on([a], date(2026, 1, 10))[0] is CalibrationStatus.DUE_SOON  # due day still holds
    assert status_on([a], date(2026, 1, 11)) == (CalibrationStatus.OVERDUE, a)
    assert status_on([a], date(2025, 1, 9))[0] is CalibrationStatus.NEVER  # readings before it
    b = _cert(date(2026, 1, 5), date(2027, 1, 5), "K-2")
    assert status_on([a, b], date(2026, 2, 1)) == (CalibrationStatus.CALIBRATED, b)
    with pytest.raises(ValidationError):
        _cert(date(2025, 1, 10), date(2025, 1, 10))
    with pytest.raises(ValidationError, match="offset"):
        ReferencePoint.from_dict({"reference_c": 5.0, "reading_c": 5.2, "offset_c": -0.2})
    assert ReferencePoint.from_dict({"reference_c": -20, "reading_c": -20.3}).offset_c == pytest.approx(-0.3)


@pytest.fixture
def token(db: psycopg.Connection) -> str:
    return auth.create_token(db, org=1, name="qa lead", role=Role.ADMIN, actor="test")


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=4) as pool, TestClient(
        create_app(Settings(database_url=db_dsn), pool=pool)
    ) as c:
        yield c


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _register(client: TestClient, token: str, device: str) -> None:
    res = client.post("/api/v1/devices", json={"id": device, "kind": "usb-logger"}, headers=_h(token))
    assert res.status_code == 201, res.text


def _calibrate(
    client: TestClient, token: str, device: str, performed: date, due: date, number: str
) -> tuple[int, dict]:
    res = client.post(
        f"/api/v1/devices/{device}/calibrations", headers=_h(token),
        data={
            "performed_on": performed.isoformat(), "due_on": due.isoformat(), "laboratory": "Lab A",
            "certificate_number": number,
            "reference_points": orjson.dumps([
                {"reference_c": 2.0, "reading_c": 2.1, "offset_c": 0.1},
                {"reference_c": 8.0, "reading_c": 7.9, "offset_c": -0.1},
            ]).decode(),
        },
        files={"certificate": ("cert.pdf", PDF, "application/pdf")},
    )
    return res.status_code, res.json()


def _shipment(client: TestClient, token: str, ship: str, device: str) -> tuple[int, dict]:
    body = {
        "id": ship, "origin": "Plant", "destination": "Hospital", "profile": "2-8C",
        "lots": [{"gtin": GTIN, "lot": "A1", "expiry": "2030-05-31", "quantity": 5}],
        "devices": [{"id": device, "from": datetime.now(UTC).isoformat(), "to": None}],
    }
    res = client.post("/api/v1/shipments", json=body, headers=_h(token))
    return res.status_code, res.json()


def test_certificates_are_recorded_with_their_pdf(client: TestClient, token: str) -> None:
    _register(client, token, "LOG-1")
    today = datetime.now(UTC).date()
    code, body = _calibrate(client, token, "LOG-1", today - _days(30), today + _days(335), "C-1")
    assert code == 201, body
    assert body["reference_points"][1]["offset_c"] == -0.1 and body["certificate_pdf"] is True
    code, _ = _calibrate(client, token, "LOG-1", today, today + _days(365), "C-1")
    assert code == 409
    listed = client.get("/api/v1/devices/LOG-1/calibrations", headers=_h(token)).json()
    assert listed["status"] == "calibrated" and len(listed["certificates"]) == 1
    pdf = client.get(f"/api/v1/devices/LOG-1/calibrations/{body['id']}/certificate", headers=_h(token))
    assert pdf.status_code == 200 and pdf.content == PDF
    bad = client.post(
        "/api/v1/devices/LOG-1/calibrations", headers=_h(token),
        data={
            "performed_on": "2026-01-01", "due_on": "2025-01-01", "laboratory": "L",
            "certificate_number": "X",
        },
    )
    assert bad.status_code == 422 and bad.json()["field"] == "due_on"
    assert client.get("/api/v1/devices/NOPE/calibrations", headers=_h(token)).status_code == 404


def test_an_out_of_calibration_logger_cannot_be_assigned(client: TestClient, token: str) -> None:
    today = datetime.now(UTC).date()
    _register(client, token, "LOG-OLD")
    code, _ = _calibrate(client, token, "LOG-OLD", today - _days(400), today - _days(35), "C-9")
    assert code == 201
    code, body = _shipment(client, token, "SO-1", "LOG-OLD")
    assert code == 409, body
    assert "out of calibration" in body["message"] and "C-9" in body["message"]
    code, _ = _calibrate(client, token, "LOG-OLD", today - _days(1), today + _days(364), "C-10")
    assert code == 201
    code, body = _shipment(client, token, "SO-1", "LOG-OLD")
    assert code == 201, body
    _register(client, token, "LOG-NEW")  # no certificate recorded yet: not refused
    assert _shipment(client, token, "SO-2", "LOG-NEW")[0] == 201


def test_warning_alert_thirty_days_before_due(client: TestClient, token: str, db: psycopg.Connection) -> None:
    today = datetime.now(UTC).date()
    _register(client, token, "LOG-DUE")
    _calibrate(client, token, "LOG-DUE", today - _days(345), today + _days(20), "C-20")
    assert check_calibrations(db, today=today - _days(15)) == (0, 0)  # 35 days before
    assert check_calibrations(db, today=today) == (1, 0)
    assert check_calibrations(db, today=today) == (0, 0)  # one alert per certificate
    row = db.execute("SELECT severity, state, message FROM alerts WHERE kind = 'calibration_due'").fetchone()
    assert row is not None and row[:2] == ("warning", "open") and "C-20" in row[2]
    _calibrate(client, token, "LOG-DUE", today, today + _days(365), "C-21")
    assert check_calibrations(db, today=today) == (0, 1)
    assert db.execute("SELECT state FROM alerts WHERE kind = 'calibration_due'").fetchone() == ("resolved",)


def test_a_logger_file_shows_the_calibration_at_the_time_of_its_readings(
    client: TestClient, token: str
) -> None:
    _register(client, token, "RCPJ00010")
    code, _ = _calibrate(client, token, "RCPJ00010", date(2021, 11, 20), date(2022, 11, 20), "Q-2021")
    assert code == 201
    raw = (DATA / "QTag_CLm_doc_LR__RCPJ00010_02_202211090128.txt").read_bytes()
    files = {"file": ("q.txt", raw, "text/plain")}
    res = client.post("/api/v1/logger-files", headers=_h(token), files=files)
    assert res.status_code == 201, res.text
    calibration = res.json()["platform_report"]["calibration"]
    assert calibration["first_reading"]["status"] == "due_soon"  # 12 days before it was due
    assert calibration["last_reading"]["certificate"] == "Q-2021"
