"""POST /api/v1/gs1/parse over HTTP against a real PostgreSQL (for the token check)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.settings import Settings
from storage import auth
from storage.db import open_pool

GTIN = "09506000134352"


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=2) as pool:
        app = create_app(Settings(database_url=db_dsn), pool=pool)
        with TestClient(app) as c:
            yield c


@pytest.fixture
def headers(db: psycopg.Connection) -> dict[str, str]:
    token = auth.create_token(db, org=1, name="erp", role=Role.VIEWER, actor="test")
    return {"Authorization": f"Bearer {token}"}


def test_parse_a_data_matrix_scan(client: TestClient, headers: dict[str, str]) -> None:
    res = client.post(
        "/api/v1/gs1/parse", json={"data": f"]d201{GTIN}1727050010A123\x1d21S1"}, headers=headers
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["elements"][0] == {"ai": "01", "value": GTIN, "title": "GTIN"}
    assert body["elements"][1] == {
        "ai": "17",
        "value": "270500",
        "title": "USE BY or EXPIRY",
        "date": "2027-05-31",
    }
    assert body["hri"] == f"(01){GTIN}(17)270500(10)A123(21)S1"
    assert (body["gtin"], body["lot"], body["serial"], body["expiry"]) == (GTIN, "A123", "S1", "2027-05-31")
    assert body["digital_link"] == f"https://id.gs1.org/01/{GTIN}/10/A123/21/S1?17=270500"
    assert body["symbology"] == "]d2" and "sscc" not in body


def test_parse_a_digital_link_and_an_sscc(client: TestClient, headers: dict[str, str]) -> None:
    res = client.post(
        "/api/v1/gs1/parse", json={"data": f"https://id.gs1.org/01/{GTIN}/10/A%2F1"}, headers=headers
    )
    assert res.json()["lot"] == "A/1"
    res = client.post("/api/v1/gs1/parse", json={"data": "(00)106141412345678908"}, headers=headers)
    assert res.json()["sscc"] == "106141412345678908"


def test_invalid_data_gets_422_naming_the_ai_and_rule(client: TestClient, headers: dict[str, str]) -> None:
    res = client.post("/api/v1/gs1/parse", json={"data": "(01)09506000134353"}, headers=headers)
    assert res.status_code == 422
    body = res.json()
    assert (body["error"], body["field"], body["ai"], body["rule"]) == (
        "ValidationError",
        "data",
        "01",
        "csum",
    )
    assert "(01)" in body["message"] and "check digit" in body["message"]
    res = client.post(
        "/api/v1/gs1/parse", json={"data": f"https://id.gs1.org/01/{GTIN[1:]}"}, headers=headers
    )
    assert (res.status_code, res.json()["rule"]) == (422, "length")
    res = client.post("/api/v1/gs1/parse", json={"data": "(10)A1"}, headers=headers)
    assert (res.status_code, res.json()["ai"]) == (422, "10")
    res = client.post(
        "/api/v1/gs1/parse", json={"data": "(10)A1", "check_requisites": False}, headers=headers
    )
    assert res.status_code == 200 and res.json()["lot"] == "A1"
    res = client.post("/api/v1/gs1/parse", json={"data": ""}, headers=headers)
    assert res.status_code == 422
    res = client.post("/api/v1/gs1/parse", json={"data": "(01)x", "strict": 1}, headers=headers)
    assert res.status_code == 422


def test_parse_needs_a_token(client: TestClient) -> None:
    assert client.post("/api/v1/gs1/parse", json={"data": "(00)106141412345678908"}).status_code == 401


def test_the_route_is_in_the_openapi_document(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/api/v1/gs1/parse"]["post"]
    assert "422" in operation["responses"]


def test_a_lot_by_its_gs1_id(client: TestClient, db: psycopg.Connection) -> None:
    token = auth.create_token(db, org=1, name="logistics", role=Role.LOGISTICS, actor="test")
    h = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/devices", json={"id": "L1"}, headers=h).status_code == 201
    shipment = {
        "id": "SO-1",
        "profile": "2-8C",
        "lots": [{"gtin": GTIN, "lot": "A/1", "quantity": 10}],
        "devices": [{"id": "L1", "from": "2026-11-24T08:00:00Z", "to": None}],
    }
    assert client.post("/api/v1/shipments", json=shipment, headers=h).status_code == 201
    for data in (
        f"https://id.gs1.org/01/{GTIN}/10/A%2F1",
        f"(01){GTIN}(10)A/1",
        f"]d201{GTIN}10A/1",
    ):
        res = client.get("/api/v1/lots", params={"id": data}, headers=h)
        assert res.status_code == 200, (data, res.text)
        body = res.json()
        assert (body["gtin"], body["lot"], body["shipments"]) == (GTIN, "A/1", ["SO-1"])
    assert client.get("/api/v1/lots", params={"id": f"(01){GTIN}(10)B2"}, headers=h).status_code == 404
    res = client.get("/api/v1/lots", params={"id": f"(01){GTIN}"}, headers=h)
    assert res.status_code == 422
    assert (res.json()["field"], res.json()["ai"], res.json()["rule"]) == ("id", None, "lot-key")
    res = client.get("/api/v1/lots", params={"id": "(01)09506000134353(10)A"}, headers=h)
    assert (res.status_code, res.json()["ai"], res.json()["rule"]) == (422, "01", "csum")
    assert client.get("/api/v1/lots", headers=h).status_code == 422
    assert client.get("/api/v1/lots", params={"id": f"(01){GTIN}(10)A"}).status_code == 401
