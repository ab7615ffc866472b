"""The OpenAPI document tells the truth: schemathesis generates requests from it (valid and
invalid, every operation) against the real app on a migrated PostgreSQL, and every check holds:
no server error, every status and body as documented, valid data accepted, invalid refused.

The schema is read from the app at import (pytest parametrizes over its operations); the
requests go in-process to an app on this module's own database, through `_App`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import settings
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig

from api.app import create_app
from coldchain import broker_accounts
from coldchain.access import Role
from coldchain.settings import Settings
from coldchain.wire import Topics
from embedded import MosquittoServer, PostgresServer
from storage import auth
from storage.db import open_pool
from tests import contract_hooks  # noqa: F401  (registers the `gtin` format)
from tests.conftest import TEMPLATE_DB

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_PER_OPERATION = 25


class _App:
    """The ASGI app schemathesis calls: forwards to the app the module fixture built."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.target is not None, "the contract_app fixture sets the app"
        await self.target(scope, receive, send)


def _config() -> SchemathesisConfig:
    """The repository's schemathesis.toml, with this run's token as the CLI's `-H` would set it
    (so schemathesis knows the header is the caller's, as when it removes it on purpose). The
    hooks are imported above rather than loaded by path, so the run works from any directory."""
    with (ROOT / "schemathesis.toml").open("rb") as f:
        data = tomllib.load(f)
    data.pop("hooks")
    data["headers"] = {"Authorization": f"Bearer {TOKEN}"}
    return SchemathesisConfig.from_dict(data, base_dir=str(ROOT))


TOKEN = auth.new_token()
_ANSWERS: dict[str, set[int]] = {}  # operation -> statuses it answered in the run
_APP = _App()
_DOC = create_app(Settings(database_url="postgresql://unused.invalid/schema-only")).openapi()
schema = schemathesis.openapi.from_dict(_DOC, config=_config())
schema.app = _APP


@pytest.fixture(scope="module")
def contract_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """One database for the whole run, so what one operation creates the next can find."""
    name = "t_contract"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield pg_server.dsn_for(name)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def admin_token(contract_dsn: str) -> str:
    with psycopg.connect(contract_dsn, autocommit=True) as conn:
        auth.ensure_token(conn, org=1, name="contract", role=Role.ADMIN, token=TOKEN)
    return TOKEN


@pytest.fixture(scope="module", autouse=True)
def contract_app(contract_dsn: str) -> Iterator[None]:
    """The app on the contract database, with a real broker (dynamic security) behind its device
    credential routes, so issuing and revoking answer as in production rather than 503."""
    password = broker_accounts.new_secret()
    doc = broker_accounts.dynsec_document(
        Topics(""), services={broker_accounts.CONTROL: broker_accounts.hash_password(password)}, devices=[]
    )
    with MosquittoServer(accounts=doc) as broker, open_pool(contract_dsn, min_size=1, max_size=4) as pool:
        control = f"mqtt://{broker_accounts.CONTROL}:{password}@127.0.0.1:{broker.port}"
        settings = Settings(database_url=contract_dsn, mqtt_control_url=SecretStr(control))
        _APP.target = create_app(settings, pool=pool)
        yield
        _APP.target = None


def test_the_document_is_the_app_s_own(contract_dsn: str) -> None:
    live = create_app(Settings(database_url=contract_dsn)).openapi()
    assert live == _DOC
    operations = [(m, p) for p, item in _DOC["paths"].items() for m in item]
    assert len(operations) >= 20
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in _DOC["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert statuses & {"200", "201", "204"}, (method, path)
            assert "400" in statuses, (method, path)
            if op.get("security"):
                assert {"401", "403", "422"} <= statuses, (method, path)
            if "requestBody" in op:
                assert "413" in statuses, (method, path)
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    assert response["content"]["application/json"]["schema"] == error, (method, path, status)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION)
def test_every_operation_keeps_the_contract(case: schemathesis.Case, admin_token: str) -> None:
    response = case.call_and_validate()
    _ANSWERS.setdefault(case.operation.label, set()).add(response.status_code)


def test_the_generated_requests_reached_the_app() -> None:
    """Authenticated requests got through: most operations answered 2xx at least once."""
    if not _ANSWERS:
        pytest.skip("the schemathesis run was deselected")
    succeeded = [op for op, statuses in _ANSWERS.items() if any(200 <= s < 300 for s in statuses)]
    assert len(succeeded) >= 15, _ANSWERS


# -- bad bytes: each gets a 4xx with a message in the one error shape, never a 500 ------------


@pytest.fixture
def raw_client(contract_dsn: str, admin_token: str) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with open_pool(contract_dsn, min_size=1, max_size=2) as pool:
        app = create_app(Settings(database_url=contract_dsn, http_max_body_bytes=4096), pool=pool)
        with TestClient(app, headers={"Authorization": f"Bearer {admin_token}"}) as client:
            yield client


def _refused(res: Any, status: int, *, field: str | None = None) -> dict[str, Any]:
    assert res.status_code == status, res.text
    body: dict[str, Any] = res.json()
    assert body["error"] and body["message"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/alerts?shipment=%00",
        "/api/v1/alerts?shipment=SO%001",
        "/api/v1/devices/TRK%00",
        "/api/v1/lots/09506000134352/A%00/readings",
    ],
)
def test_nul_in_path_or_query_is_a_400(raw_client: Any, url: str) -> None:
    _refused(raw_client.get(url), 400)


def test_nul_and_bad_utf8_in_bodies(raw_client: Any) -> None:
    h = {"Content-Type": "application/json"}
    _refused(raw_client.post("/api/v1/devices", json={"id": "D1", "name": "a\u0000b"}), 422, field="name")
    _refused(raw_client.post("/api/v1/devices", content=b'{"id": "D\xff\xfe"}', headers=h), 400)
    _refused(raw_client.post("/api/v1/devices", content=b'{"id": ', headers=h), 400, field="body")
    _refused(raw_client.post("/api/v1/devices", content=b"\x00\x01", headers=h), 400)
    _refused(raw_client.get("/api/v1/alerts?shipment=%FF%FE"), 422, field="shipment")


def test_huge_and_odd_numbers(raw_client: Any) -> None:
    def device(interval: object) -> Any:
        return raw_client.post("/api/v1/devices", json={"id": f"D-{id(interval)}", "interval_s": interval})

    _refused(raw_client.get(f"/api/v1/alerts/{10**30}"), 422, field="alert_id")
    for interval in (10**40, "60", True, 0.5):
        _refused(device(interval), 422, field="interval_s")
    h = {"Content-Type": "application/json"}
    _refused(raw_client.post("/api/v1/devices", content=b'{"id": "D3", "interval_s": 1e999}', headers=h), 422)
    assert device(60.0).status_code == 201
    _refused(raw_client.get("/api/v1/lots/09506000134352/A1/readings?limit=99999999999999999999"), 422)
    _refused(raw_client.get("/api/v1/lots/09506000134352/A1/readings?bucket="), 422, field="bucket")
    _refused(raw_client.get("/api/v1/lots/0/0"), 422, field="gtin")


def test_request_bodies_over_the_limit_are_refused_before_parsing(raw_client: Any) -> None:
    big = b'{"id": "D7", "name": "' + b"x" * 5000 + b'"}'
    h = {"Content-Type": "application/json"}
    body = _refused(raw_client.post("/api/v1/devices", content=big, headers=h), 413)
    assert "4096" in body["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams
        for _ in range(10):
            yield b" " * 1000
        yield b'{"id": "D8"}'

    _refused(raw_client.post("/api/v1/devices", content=chunks(), headers=h), 413)
    small = raw_client.post("/api/v1/devices", content=iter([b'{"id": ', b'"D9"}']), headers=h)
    assert small.status_code == 201, small.text
    _refused(raw_client.post("/api/v1/devices", content=b"{}", headers={**h, "Content-Length": "x"}), 400)
    assert raw_client.get("/api/v1/devices/D7").status_code == 404


def test_unknown_query_parameters_and_methods(raw_client: Any) -> None:
    _refused(raw_client.get("/api/v1/alerts?stat=open"), 422, field="stat")
    res = raw_client.delete("/api/v1/devices")
    _refused(res, 405)
    assert set(res.headers["allow"].split(", ")) >= {"GET", "POST"}
    _refused(raw_client.get("/api/v1/no-such-thing"), 404)
