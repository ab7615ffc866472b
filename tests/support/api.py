"""The API in-process for a test: the real app on its own pool, through Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.settings import Settings
from storage.db import open_pool


@contextmanager
def api_client(
    dsn: str, settings: Settings | None = None, *, token: str | None = None, pool_size: int = 4
) -> Iterator[TestClient]:
    """A client of the app on `dsn` (settings: just the database, unless given), with a bearer
    token on every request when `token` is given."""
    with (
        open_pool(dsn, max_size=pool_size) as pool,
        TestClient(create_app(settings or Settings(database_url=dsn), pool=pool)) as client,
    ):
        if token is not None:
            client.headers["Authorization"] = f"Bearer {token}"
        yield client
