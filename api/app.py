"""The FastAPI application: built from Settings, owning one connection pool through its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from psycopg_pool import ConnectionPool

from api import errors
from api.config_publisher import ConfigPublisher
from api.deps import Conn, refuse_unknown_query
from api.limits import RequestGuard
from api.routes import (
    alerts,
    api_keys,
    audit,
    auth,
    calibrations,
    device_config,
    erp,
    evidence,
    logger_files,
    lots,
    master_data,
    notify,
    organizations,
    profile_changes,
    registry,
    shares,
    users,
)
from api.routes import device_credentials as device_credential_routes
from api.routes import epcis as epcis_routes
from api.routes import gs1 as gs1_routes
from api.routes import imports as import_routes
from api.routes import recalls as recall_routes
from api.schemas import Health
from api.security_headers import SecurityHeaders
from coldchain import __version__
from coldchain.settings import Settings
from coldchain.wire import Topics
from storage.db import open_pool

API_PREFIX = "/api/v1"


def _operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names: what a generated client calls its methods."""
    return route.name


def _config_publisher(settings: Settings) -> ConfigPublisher | None:
    """The publisher of desired device configs, when the API has a broker (MQTT_URL) to send to."""
    if settings.mqtt_url is None or settings.database_url is None:
        return None
    return ConfigPublisher(
        dsn=settings.database_url,
        mqtt_url=settings.mqtt_url,
        topics=Topics(settings.topic_prefix),
        poll_s=settings.config_publish_poll_s,
    ).start()


def create_app(settings: Settings, *, pool: ConnectionPool | None = None) -> FastAPI:
    """An app for these settings; given a pool it uses it (and leaves closing it to the caller)."""
    if settings.database_url is None and pool is None:
        raise ValueError("the API needs DATABASE_URL or a pool")
    settings.require_secret_key()  # signs access tokens and ack links: no public default

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        publisher = _config_publisher(settings)
        try:
            if pool is not None:
                yield {"pool": pool, "settings": settings}
                return
            assert settings.database_url is not None
            own = open_pool(settings.database_url, min_size=1, max_size=10, name="api")
            try:
                yield {"pool": own, "settings": settings}
            finally:
                own.close()
        finally:
            if publisher is not None:
                publisher.stop()

    app = FastAPI(
        title="coldchain",
        version=__version__,
        description="Cold-chain telemetry and excursion alerting: devices, shipments, lots, alerts.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        generate_unique_id_function=_operation_id,
    )
    errors.install(app)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.http_max_body_bytes,
        large_bodies={f"{API_PREFIX}/evidence/verify": evidence.MAX_UPLOAD_BYTES},
        path_limits={
            f"{API_PREFIX}/imports": import_routes.MAX_IMPORT_BYTES,
            f"{API_PREFIX}/epcis/capture": epcis_routes.MAX_CAPTURE_BYTES,
        },
    )
    app.add_middleware(
        SecurityHeaders, hsts=bool(settings.public_url and settings.public_url.startswith("https://"))
    )

    v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(refuse_unknown_query)])

    @v1.get("/health", tags=["health"], response_model=Health, responses=errors.responses(400, 422))
    def health(conn: Conn) -> Health:
        """Liveness and database reachability; needs no token (load balancers call it)."""
        conn.execute("SELECT 1")
        return Health(status="ok", database="ok", version=__version__)

    routers = (registry, master_data, shares, profile_changes, lots, alerts, notify, evidence)
    for module in (*routers, auth, users, api_keys, audit, organizations):
        v1.include_router(module.router)
    v1.include_router(logger_files.router)
    v1.include_router(calibrations.router)
    v1.include_router(device_credential_routes.router)
    v1.include_router(device_config.router)
    v1.include_router(gs1_routes.router)
    v1.include_router(import_routes.router)
    v1.include_router(recall_routes.router)
    v1.include_router(erp.router)
    v1.include_router(epcis_routes.router)
    app.include_router(v1)
    app.include_router(notify.ack_router)  # /ack/{token}: the signed link is the credential
    app.include_router(recall_routes.ack_router)  # /recall-ack/{token}: likewise, for consignees

    @app.get("/health", include_in_schema=False)
    def health_root() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> HTMLResponse:
        page = (resources.files("api") / "static" / "dashboard.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    return app
