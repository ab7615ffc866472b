"""The OpenAPI document tells the truth: schemathesis generates requests from it (valid and
invalid, every operation) against the real app on a migrated PostgreSQL, and every check holds:
no server error, every status and body as documented, valid data accepted, invalid refused.

The schema is read from the app at import (pytest parametrizes over its operations); the
requests go in-process to an app on this module's own database, through `_App`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import settings
from schemathesis.config import SchemathesisConfig

from api.app import create_app
from coldchain.access import Role
from coldchain.settings import Settings
from embedded import PostgresServer
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


_APP = _App()
_DOC = create_app(Settings(database_url="postgresql://unused.invalid/schema-only")).openapi()
schema = schemathesis.openapi.from_dict(_DOC, config=SchemathesisConfig.from_path(ROOT / "schemathesis.toml"))
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
def admin_token(contract_dsn: str) -> Iterator[str]:
    with psycopg.connect(contract_dsn, autocommit=True) as conn:
        yield auth.create_token(conn, org=1, name="contract", role=Role.ADMIN, actor="test")


@pytest.fixture(scope="module", autouse=True)
def contract_app(contract_dsn: str) -> Iterator[None]:
    with open_pool(contract_dsn, min_size=1, max_size=4) as pool:
        _APP.target = create_app(Settings(database_url=contract_dsn), pool=pool)
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
    case.call_and_validate(headers={"Authorization": f"Bearer {admin_token}"})
