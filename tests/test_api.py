"""The HTTP API against a real PostgreSQL: auth and roles, registry, lots, alerts, precise errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.schemas import BucketReading, LotReadings, RawReading
from coldchain.access import Role
from coldchain.domain import Device, DeviceAssignment, Lot, Severity, Shipment, ShipmentLot
from storage import alerts, auth, registry
from storage.readings import ReadingRows, copy_rows
from tests.support.api import api_client
from tests.support.devices import known_devices
from tests.support.identity import bearer, make_user, signature

GTIN = "09506000134352"


@pytest.fixture
def admin_token(db: psycopg.Connection) -> str:
    return auth.create_token(db, org=1, name="admin", role=Role.ADMIN, actor="test")


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with api_client(db_dsn) as c:
        yield c


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_needs_no_token_everything_else_does(client: TestClient) -> None:
    assert client.get("/api/v1/health").json()["database"] == "ok"
    res = client.get("/api/v1/devices")
    assert res.status_code == 401 and "Bearer" in res.json()["message"]
    assert client.get("/api/v1/devices", headers=_h("cc_wrong")).status_code == 401


def test_register_device_and_shipment_then_read_lot(client: TestClient, admin_token: str) -> None:
    h = _h(admin_token)
    res = client.post(
        "/api/v1/devices", json={"id": "TRK-0042-L1", "kind": "usb-logger", "interval_s": 60}, headers=h
    )
    assert res.status_code == 201, res.text
    assert client.post("/api/v1/devices", json={"id": "TRK-0042-L1"}, headers=h).status_code == 409
    body = {
        "id": "SO-1001",
        "origin": "Plant A",
        "destination": "Hospital B",
        "profile": "2-8C",
        "lots": [{"gtin": GTIN, "lot": "A123", "expiry": "2027-05-31", "quantity": 400}],
        "devices": [{"id": "TRK-0042-L1", "from": "2026-11-24T08:00:00Z", "to": None}],
    }
    res = client.post("/api/v1/shipments", json=body, headers=h)
    assert res.status_code == 201, res.text
    assert res.json()["lots"][0]["lot"] == "A123"
    lot = client.get(f"/api/v1/lots/{GTIN}/A123", headers=h).json()
    assert lot["shipments"] == ["SO-1001"] and lot["devices"] == ["TRK-0042-L1"]
    assert lot["digital_link"] == f"https://id.gs1.org/01/{GTIN}/10/A123"
    assert client.get(f"/api/v1/lots/{GTIN}/A123/readings?bucket=5m", headers=h).json()["readings"] == []


def test_lot_readings_are_the_models_own_json(
    client: TestClient, db: psycopg.Connection, admin_token: str
) -> None:
    """The readings route writes its body in one orjson call: byte for byte what the response
    model would serialise (times in UTC with Z, floats shortest, nulls), raw and bucketed."""
    registry.create_device(db, org=1, device=Device(id="L-JSON"), actor="t")
    start = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    registry.create_shipment(
        db, org=1, profile_version=1, actor="t",
        shipment=Shipment(id="SO-JSON", lots=(ShipmentLot(Lot(GTIN, "J1")),),
                          devices=(DeviceAssignment("L-JSON", start),)),
    )
    dev = known_devices(db, ["L-JSON"])["L-JSON"]
    t = int(start.timestamp() * 1000) + np.arange(130, dtype=np.int64) * 60_000 + 250
    n = len(t)
    with db.transaction():
        copy_rows(db, ReadingRows(
            org_id=np.ones(n, np.int16), device_key=np.full(n, dev.key, np.int32),
            shipment_key=dev.shipments_at(t), seq=np.zeros(n, np.int64), t_ms=t,
            celsius=np.round(4 + np.sin(np.arange(n) / 5.0) * 3, 2).astype(np.float32),
            rh=np.where(np.arange(n) % 3 == 0, np.nan, 55.5).astype(np.float32),
            flags=np.where(np.arange(n) % 7 == 0, 1, 0).astype(np.int16),
        ))
    h = _h(admin_token)
    for query, model_rows in (("", RawReading), ("?bucket=1h", BucketReading), ("?bucket=7m", BucketReading)):
        res = client.get(f"/api/v1/lots/{GTIN}/J1/readings{query}", headers=h)
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        model = LotReadings.model_validate_json(res.content)
        assert model.readings and all(isinstance(r, model_rows) for r in model.readings)
        assert res.content == model.model_dump_json().encode(), query
    raw = client.get(f"/api/v1/lots/{GTIN}/J1/readings?limit=3", headers=h).json()["readings"]
    assert [r["t"] for r in raw] == ["2026-11-24T08:00:00.250000Z", "2026-11-24T08:01:00.250000Z",
                                     "2026-11-24T08:02:00.250000Z"]
    assert raw[0]["rh"] is None and raw[0]["late"] is True and raw[1]["rh"] == 55.5
    hourly = client.get(f"/api/v1/lots/{GTIN}/J1/readings?bucket=1h", headers=h).json()["readings"]
    assert [b["n"] for b in hourly] == [60, 60, 10] and hourly[0]["t"] == "2026-11-24T08:00:00Z"


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"lots": [{"gtin": "09506000134353", "lot": "A1"}]}, 422, "gtin"),
        ({"profile": "no-such-profile"}, 404, None),
        ({"devices": [{"id": "UNKNOWN", "from": "2026-11-24T08:00:00Z"}]}, 422, "devices"),
        ({"surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_shipments_get_precise_errors(
    client: TestClient, admin_token: str, change: dict[str, object], status: int, field: str | None
) -> None:
    body = {"id": "SO-9", **change}
    res = client.post("/api/v1/shipments", json=body, headers=_h(admin_token))
    assert res.status_code == status, res.text
    assert res.json()["message"]
    if field:
        assert field in (res.json().get("field") or res.json()["message"])


def test_roles_are_enforced(client: TestClient, db: psycopg.Connection) -> None:
    viewer = auth.create_token(db, org=1, name="viewer", role=Role.VIEWER, actor="t")
    res = client.post("/api/v1/devices", json={"id": "X1"}, headers=_h(viewer))
    assert res.status_code == 403


def test_alert_lifecycle_over_http(client: TestClient, db: psycopg.Connection, admin_token: str) -> None:
    registry.create_device(db, org=1, device=Device(id="D1"), actor="t")
    with db.transaction():
        alert_id, created = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key="k1",
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C for 30 min",
                started_at=datetime.now(UTC),
            ),
        )
    assert created
    h = _h(admin_token)
    # Closing is QA's signed decision: a person with the qa role, who re-enters the password.
    make_user(db, "qa@example.com", ["qa"])
    qa = bearer(client, "qa@example.com")
    assert [a["id"] for a in client.get("/api/v1/alerts?state=open", headers=h).json()] == [alert_id]
    res = client.post(
        f"/api/v1/alerts/{alert_id}/close",
        json={"disposition": "release", "comment": "x", "signature": signature()},
        headers=qa,
    )
    assert res.status_code == 409  # must be resolved first
    assert (
        client.post(f"/api/v1/alerts/{alert_id}/ack", json={"comment": "on it"}, headers=h).json()["state"]
        == "acknowledged"
    )
    assert client.post(f"/api/v1/alerts/{alert_id}/resolve", json={}, headers=h).json()["state"] == "resolved"
    res = client.post(
        f"/api/v1/alerts/{alert_id}/close",
        json={"disposition": "release", "comment": "MKT within label", "signature": signature()},
        headers=qa,
    )
    assert res.json()["state"] == "closed" and res.json()["disposition"] == "release"
    history = client.get(f"/api/v1/alerts/{alert_id}", headers=h).json()["history"]
    assert [e["action"] for e in history] == ["open", "acknowledge", "resolve", "close"]
    assert history[1]["actor"] == "admin" and history[1]["comment"] == "on it"
    # Other organizations cannot see it.
    other = auth.create_organization(db, "acme", "Acme")
    acme = auth.create_token(db, org=other, name="acme-admin", role=Role.ADMIN, actor="t")
    assert client.get(f"/api/v1/alerts/{alert_id}", headers=_h(acme)).status_code == 404


def test_dashboard_is_served(client: TestClient) -> None:
    res = client.get("/dashboard")
    assert res.status_code == 200 and "Alerts needing attention" in res.text


def test_products_default_the_shipment_profile(
    client: TestClient, admin_token: str, db: psycopg.Connection
) -> None:
    h = _h(admin_token)
    # Which limits a product travels under is QA's change control, not the registrar's.
    denied = client.put(f"/api/v1/products/{GTIN}/profile", json={"profile": "15-25C"}, headers=h)
    assert denied.status_code == 403
    qa = _h(auth.create_token(db, org=1, name="qa", role=Role.QA, actor="test"))
    res = client.put(f"/api/v1/products/{GTIN}/profile", json={"profile": "15-25C"}, headers=qa)
    assert res.status_code == 200, res.text
    body = {"id": "SO-CRT", "lots": [{"gtin": GTIN, "lot": "B1"}]}
    assert client.post("/api/v1/shipments", json=body, headers=h).json()["profile"] == "15-25C"
    body = {"id": "SO-NAMED", "profile": "frozen-20C", "lots": [{"gtin": GTIN, "lot": "B2"}]}
    assert client.post("/api/v1/shipments", json=body, headers=h).json()["profile"] == "frozen-20C"
    body = {"id": "SO-OTHER", "lots": [{"gtin": "09506000134376", "lot": "C1"}]}
    assert client.post("/api/v1/shipments", json=body, headers=h).json()["profile"] == "2-8C"
    unknown = client.put(f"/api/v1/products/{GTIN}/profile", json={"profile": "nope"}, headers=qa)
    assert unknown.status_code == 404
