"""People for tests: create a user straight in storage, sign in over HTTP, sign a decision."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi.testclient import TestClient

from coldchain.access import parse_roles
from coldchain.passwords import PasswordHashing, PasswordPolicy
from storage import users

PASSWORD = "a long passphrase 4 QA"


def make_user(
    db: psycopg.Connection,
    email: str,
    roles: list[str],
    *,
    name: str | None = None,
    org: int = 1,
    password: str = PASSWORD,
) -> users.UserRow:
    return users.create_user(
        db,
        org=org,
        email=email,
        printed_name=name or email.split("@")[0].replace(".", " ").title(),
        roles=parse_roles(roles),
        password=password,
        actor="test",
        policy=PasswordPolicy(),
        hashing=PasswordHashing(),
    )


def login(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    res = client.post("/api/v1/auth/token", data={"username": email, "password": password})
    assert res.status_code == 200, res.text
    body: dict[str, Any] = res.json()
    return body


def bearer(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": f"Bearer {login(client, email, password)['access_token']}"}


def signature(meaning: str = "release", password: str = PASSWORD) -> dict[str, str]:
    return {"password": password, "meaning": meaning}
