"""Benchmark of identity: login latency (argon2id at the chosen cost, over real HTTP), and the
per-request cost of checking a token (a person's JWT, an API key) against a request with none.

1. login: N logins over HTTP (uvicorn on loopback) -> `login_p50_ms`, `login_p95_ms`; also
   the bare argon2id verify at the same cost.
2. token check: the authentication step alone (JWT decode + the user's row; API key digest
   lookup) timed in-process -> `jwt_check_p95_us`, `api_key_check_p95_us` (the per-request
   overhead); and end to end over HTTP, /auth/me with either token beside /health (no token,
   one SELECT 1), whose spread on a shared machine is wider than the check itself.
3. the authorization matrix of tests/test_authorization_matrix.py: its size (routes x principals).

Prints one JSON line last. Run: python bench/identity.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
import uvicorn  # noqa: E402

from api import identity  # noqa: E402
from api.app import create_app  # noqa: E402
from coldchain.access import Role  # noqa: E402
from coldchain.settings import Settings  # noqa: E402
from embedded import PostgresServer  # noqa: E402
from embedded.process import free_port  # noqa: E402
from storage import auth  # noqa: E402
from storage.db import open_pool  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from tests.support.identity import PASSWORD, make_user  # noqa: E402

SECRET_KEY = "bench-identity-secret-key-0123456789abcdef"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name="bench-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer logins and requests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logins = 20 if args.quick else 60
    requests = 300 if args.quick else 2000
    figures: dict[str, Any] = {}
    with PostgresServer(fast_and_unsafe=True) as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_identity")
        dsn = server.dsn_for("bench_identity")
        migrate(dsn)
        settings = Settings(database_url=dsn, secret_key=SECRET_KEY, lockout_failures=10**6)  # type: ignore[arg-type]
        hashing = identity.hashing(settings)
        with psycopg.connect(dsn, autocommit=True) as db:
            user = make_user(db, "bench@example.com", ["qa"])
            key = auth.create_token(db, org=1, name="bench", role=Role.VIEWER, actor="bench")
        stored = hashing.hash(PASSWORD)
        verify_ms = []
        for _ in range(logins):
            t0 = time.perf_counter()
            hashing.verify(stored, PASSWORD)
            verify_ms.append((time.perf_counter() - t0) * 1000)

        port = free_port()
        with open_pool(dsn, min_size=2, max_size=4) as pool:
            uv, thread = _serve(create_app(settings, pool=pool), port)
            base = f"http://127.0.0.1:{port}/api/v1"
            try:
                with httpx.Client(timeout=10) as http:
                    login_ms = []
                    token = ""
                    for _ in range(logins):
                        t0 = time.perf_counter()
                        res = http.post(
                            f"{base}/auth/token", data={"username": user.email, "password": PASSWORD}
                        )
                        login_ms.append((time.perf_counter() - t0) * 1000)
                        res.raise_for_status()
                        token = res.json()["access_token"]

                    def timed(path: str, headers: dict[str, str]) -> list[float]:
                        out = []
                        for _ in range(requests):
                            t0 = time.perf_counter()
                            http.get(f"{base}{path}", headers=headers).raise_for_status()
                            out.append((time.perf_counter() - t0) * 1e6)
                        return out

                    timed("/health", {})  # warm up
                    bare = timed("/health", {})
                    with_jwt = timed("/auth/me", {"Authorization": f"Bearer {token}"})
                    with_key = timed("/auth/me", {"Authorization": f"Bearer {key}"})
            finally:
                uv.should_exit = True
                thread.join(timeout=10)

            # The authentication step alone, as the dependency runs it.
            jwt_us, key_us = [], []
            with pool.connection() as conn:
                conn.autocommit = True
                for _ in range(requests):
                    t0 = time.perf_counter()
                    identity.authenticate_user(conn, settings, token)
                    jwt_us.append((time.perf_counter() - t0) * 1e6)
                    t0 = time.perf_counter()
                    auth.authenticate(conn, key)
                    key_us.append((time.perf_counter() - t0) * 1e6)

    from tests.test_authorization_matrix import MATRIX, PRINCIPALS

    figures.update(
        {
            "argon2id": {
                "memory_kib": settings.argon2_memory_kib,
                "passes": settings.argon2_passes,
                "lanes": settings.argon2_lanes,
            },
            "argon2_verify_p50_ms": round(statistics.median(verify_ms), 1),
            "argon2_verify_p95_ms": round(_pct(verify_ms, 0.95), 1),
            "logins": logins,
            "login_p50_ms": round(statistics.median(login_ms), 1),
            "login_p95_ms": round(_pct(login_ms, 0.95), 1),
            "requests": requests,
            "jwt_check_p50_us": round(statistics.median(jwt_us), 1),
            "jwt_check_p95_us": round(_pct(jwt_us, 0.95), 1),
            "api_key_check_p50_us": round(statistics.median(key_us), 1),
            "api_key_check_p95_us": round(_pct(key_us, 0.95), 1),
            "http_no_token_p50_us": round(statistics.median(bare), 1),
            "http_jwt_p50_us": round(statistics.median(with_jwt), 1),
            "http_api_key_p50_us": round(statistics.median(with_key), 1),
            "http_no_token_p95_us": round(_pct(bare, 0.95), 1),
            "http_jwt_p95_us": round(_pct(with_jwt, 0.95), 1),
            "http_api_key_p95_us": round(_pct(with_key, 0.95), 1),
            "matrix_routes": len(MATRIX),
            "matrix_principals": len(PRINCIPALS),
            "matrix_calls": len(MATRIX) * len(PRINCIPALS),
            "targets": {"login_p95_ms": 300},
        }
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
