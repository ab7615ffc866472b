"""The `coldchain` command: the composition root, which alone may import every package (lazily)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coldchain.errors import ColdchainError
from coldchain.log import configure_logging
from coldchain.settings import Settings, load_settings

log = logging.getLogger("coldchain")
_IDENTITY_COMMANDS = frozenset({"users", "orgs", "api-keys", "audit"})


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML settings file (same names as the environment)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldchain", description="Cold-chain telemetry and alerting.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="the whole platform on this machine")
    _common(up)
    up.add_argument("--demo", action="store_true", help="register a demo fleet and simulate it")
    up.add_argument("--data-dir", type=Path, help="where the private servers keep their data (./.coldchain)")
    up.add_argument("--http-port", type=int, help="dashboard and API port (8000)")
    up.add_argument("--mqtt-port", type=int, help="port of the private broker (1883, or a free one)")
    up.add_argument("--time-scale", type=float, default=120.0, help="demo: simulated seconds per second")

    for name, text in (
        ("ingest", "the MQTT ingest service"),
        ("rules", "the rules and notification service"),
        ("api", "the HTTP API and dashboard"),
    ):
        _common(sub.add_parser(name, help=text))

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _common(db_sub.add_parser("migrate", help="apply pending migrations"))

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    _common(create)
    create.add_argument("--name", required=True)
    create.add_argument(
        "--role", required=True, choices=["admin", "qa", "logistics", "driver", "erp", "viewer"]
    )
    create.add_argument("--organization", default="default")

    from coldchain import cli_identity  # users, orgs, api-keys, audit

    cli_identity.add_parsers(sub, _common)

    sim = sub.add_parser(
        "sim", help="simulated loggers and fleets (see `coldchain sim --help`)", add_help=False
    )
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sim"]:
        from firmware_sim.cli import main as sim_main

        return int(sim_main(args_list[1:]))
    args = build_parser().parse_args(args_list)
    try:
        try:
            settings = load_settings(getattr(args, "config", None))
        except ColdchainError as exc:
            if args.command != "up" or "SECRET_KEY" not in str(exc):
                raise
            # `coldchain up` in production without SECRET_KEY: the key generated into its data folder.
            data_dir = args.data_dir or Path(os.environ.get("DATA_DIR", ".coldchain"))
            key = _secret_key_file(data_dir.resolve())
            settings = load_settings(getattr(args, "config", None), secret_key=key)
        configure_logging(settings.log_level, json_lines=settings.log_json)
        return _dispatch(args, settings)
    except ColdchainError as exc:
        print(f"coldchain: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "up":
        overrides: dict[str, Any] = {}
        if args.data_dir is not None:
            overrides["data_dir"] = args.data_dir
        if args.http_port is not None:
            overrides["http_port"] = args.http_port
        settings = settings.model_copy(update=overrides)
        return run_platform(settings, demo=args.demo, mqtt_port=args.mqtt_port, time_scale=args.time_scale)
    if args.command == "db":
        from storage.migrate import migrate

        applied = migrate(_require(settings.database_url, "DATABASE_URL"))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    if args.command in _IDENTITY_COMMANDS:
        from coldchain import cli_identity

        return cli_identity.dispatch(args, settings)
    if args.command == "token":
        from coldchain.access import Role
        from storage import auth
        from storage.db import connect

        with connect(_require(settings.database_url, "DATABASE_URL")) as conn, conn.transaction():
            org = auth.org_id(conn, args.organization)
            token = auth.create_token(conn, org=org, name=args.name, role=Role(args.role), actor="cli")
        print(token)
        return 0
    if args.command in ("rules", "api"):
        settings.require_secret_key()  # ack links and access tokens: no public default key
    stop = _stop_on_signals()
    if args.command == "ingest":
        from ingest.service import run as run_ingest

        run_ingest(settings, stop)
    elif args.command == "rules":
        from rules.service import run as run_rules

        run_rules(settings, stop)
    elif args.command == "api":
        _serve_api(settings)
    return 0


# --------------------------------------------------------------------------- coldchain up


def run_platform(settings: Settings, *, demo: bool, mqtt_port: int | None, time_scale: float) -> int:
    """Every service in one process tree; private servers when no DATABASE_URL / MQTT_URL."""
    import contextlib

    import uvicorn

    from api.app import create_app
    from coldchain.wire import Topics
    from embedded import MosquittoServer, PostgresServer
    from embedded.process import free_port, port_is_free
    from ingest.service import IngestService
    from rules.service import RulesService
    from storage.db import open_pool
    from storage.migrate import migrate

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = _ensure_secret_key(settings, data_dir)
    with contextlib.ExitStack() as stack:
        dsn = app_dsn = settings.database_url
        if dsn is None:
            port = 54329 if port_is_free(54329) else free_port()
            pg = PostgresServer(data_dir / "postgres", port=port)
            print(f"starting PostgreSQL in {pg.data_dir} on port {port} ...", flush=True)
            pg.start()
            stack.callback(pg.stop)
            # Password authentication with generated secrets; migrations as the owner, services as app.
            from embedded.credentials import ClusterCredentials, secure_cluster

            creds = ClusterCredentials.ensure(data_dir).with_port(port)
            secure_cluster(creds.url("superuser"), pg.data_dir / "pg_hba.conf", creds)
            dsn, app_dsn = creds.url("owner"), creds.url("app")
        mqtt_url = settings.mqtt_url
        if mqtt_url is None:
            port = mqtt_port or (1883 if port_is_free(1883) else free_port())
            broker = MosquittoServer(data_dir / "mosquitto", port=port)
            print(f"starting Mosquitto on port {port} ...", flush=True)
            broker.start()
            stack.callback(broker.stop)
            mqtt_url = broker.url
        assert dsn is not None and app_dsn is not None
        migrate(dsn)
        dsn = app_dsn  # everything from here on runs as the application role
        settings = settings.model_copy(update={"database_url": dsn, "mqtt_url": mqtt_url})
        token, fresh = _bootstrap_token(settings, dsn, data_dir)
        from coldchain.cli_identity import Checkpoints, checkpoint_key

        key = checkpoint_key(None, settings)
        if key is not None:  # the audit heads, signed with the platform key now and then
            stack.callback(Checkpoints(dsn, key, settings.audit_checkpoint_interval_s).start().stop)
        topics = Topics(settings.topic_prefix)

        ingest = IngestService(dsn=dsn, mqtt_url=mqtt_url, topics=topics, settings=settings)
        ingest.start()
        stack.callback(ingest.stop)
        rules = RulesService(dsn=dsn, settings=settings)
        rules.start()
        stack.callback(rules.stop)
        if demo:
            fleet = _start_demo(dsn, mqtt_url, topics, time_scale)
            stack.callback(fleet.stop)

        if not port_is_free(settings.http_port):
            busy, port = settings.http_port, free_port()
            print(f"port {busy} is busy; serving the API and dashboard on {port} instead", flush=True)
            settings = settings.model_copy(update={"http_port": port})
        pool = stack.enter_context(open_pool(dsn, min_size=1, max_size=10, name="api"))
        app = create_app(settings, pool=pool)
        url = f"http://{settings.http_host}:{settings.http_port}/dashboard"
        print(f"\ncoldchain is up.\n  dashboard: {url}" + (f"#token={token}" if fresh else ""), flush=True)
        print(f"  API:       http://{settings.http_host}:{settings.http_port}/docs", flush=True)
        print(f"  MQTT:      {mqtt_url}", flush=True)
        if fresh:
            print(f"  admin token (shown once, also in {data_dir / 'admin-token'}): {token}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)

        class _OwnSignalsServer(uvicorn.Server):
            """uvicorn re-raises the signal it caught after shutting down, which would kill this
            process before the services and servers below are stopped; we own the signals."""

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        server = _OwnSignalsServer(
            uvicorn.Config(
                app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False
            )
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: setattr(server, "should_exit", True))
        server.run()
        print("stopping ...", flush=True)
    print("stopped.", flush=True)
    return 0


def _bootstrap_token(settings: Settings, dsn: str, data_dir: Path) -> tuple[str, bool]:
    """The admin API key: COLDCHAIN_BOOTSTRAP_TOKEN, or one made on first start and kept in a 0600 file."""
    from storage import api_keys, auth
    from storage.db import connect

    path = data_dir / "admin-token"
    fresh = False
    if settings.bootstrap_token is not None:
        token = settings.bootstrap_token.get_secret_value()
    elif path.exists():
        token = path.read_text().strip()
    else:
        token = auth.new_token()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        fresh = True
    with connect(dsn, autocommit=True) as conn:
        # A changed COLDCHAIN_BOOTSTRAP_TOKEN revokes the earlier bootstrap key (rotation).
        added = api_keys.ensure_bootstrap(conn, org=auth.org_id(conn, settings.organization), token=token)
    return token, fresh or (added and settings.bootstrap_token is None)


def _ensure_secret_key(settings: Settings, data_dir: Path) -> Settings:
    """SECRET_KEY, or one generated on first start into `<data>/secrets/secret-key` (0600)."""
    from pydantic import SecretStr

    if not settings.secret_key_generated:
        return settings
    return settings.model_copy(update={"secret_key": SecretStr(_secret_key_file(data_dir))})


def _secret_key_file(data_dir: Path) -> str:
    import secrets

    folder = data_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


def _start_demo(dsn: str, mqtt_url: str, topics: Any, time_scale: float) -> Any:
    """Register the demo fleet (once) and start simulating it from where it left off."""
    import time
    from datetime import UTC, datetime, timedelta

    from coldchain.demo import demo_fleet
    from coldchain.errors import ConflictError
    from firmware_sim.fleet import Fleet, LoggerSpec
    from storage import registry
    from storage.db import connect

    now = datetime.now(UTC)
    # Simulated time starts in the past and runs fast, so a day's story plays in minutes and
    # never runs ahead of the wall clock for the first hours of a demo.
    start = now - timedelta(hours=12)
    shipments, loggers = demo_fleet(start)
    seq_start: dict[str, int] = {}
    resume_ms: int | None = None
    with connect(dsn) as conn:
        for logger in loggers:
            try:
                with conn.transaction():
                    registry.create_device(conn, org=1, device=logger.device, actor="demo")
            except ConflictError:
                pass
        for shipment in shipments:
            try:
                with conn.transaction():
                    registry.create_shipment(conn, org=1, shipment=shipment, profile_version=1, actor="demo")
            except ConflictError:
                pass
        for rec in registry.list_devices(conn, org=1):
            if rec.device.id.startswith("DEMO-") and rec.last_seq is not None:
                seq_start[rec.device.id] = rec.last_seq + 1
        row = conn.execute(
            "SELECT (extract(epoch FROM max(r.t)) * 1000)::bigint FROM readings r"
            " JOIN devices d ON d.key = r.device_key WHERE d.id LIKE 'DEMO-%'"
        ).fetchone()
        if row and row[0] is not None:
            resume_ms = int(row[0]) + 60_000
    start_ms = max(int(start.timestamp() * 1000), resume_ms or 0)
    start_ms = min(start_ms, int(time.time() * 1000) - 3_600_000)
    specs = [
        LoggerSpec(
            device_id=lg.device.id,
            scenario=lg.scenario,
            interval_s=lg.device.interval_s,
            batch_size=5,
            seed=lg.seed,
        )
        for lg in loggers
    ]
    fleet = _DemoFleet(
        lambda scale, begin, seqs: Fleet(
            mqtt_url=mqtt_url,
            topics=topics,
            loggers=specs,
            time_scale=scale,
            start_ms=begin,
            seq_start=seqs,
        ),
        time_scale=time_scale,
        start_ms=start_ms,
        seq_start=seq_start,
    )
    fleet.start()
    print(f"demo fleet: {len(specs)} loggers on {len(shipments)} shipments, {time_scale:g}x time", flush=True)
    return fleet


class _DemoFleet:
    """Plays the demo fast until simulated time reaches the wall clock, then in real time:
    a logger never reports readings from the future (ingest would rightly refuse them)."""

    def __init__(self, make: Any, *, time_scale: float, start_ms: int, seq_start: dict[str, int]) -> None:
        self._make = make
        self._fleet = make(time_scale, start_ms, seq_start)
        self._fast = time_scale > 1
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._run, name="demo-clock", daemon=True)

    def start(self) -> None:
        self._fleet.start()
        self._watch.start()

    def _run(self) -> None:
        import time

        while self._fast and not self._stop.wait(1.0):
            if self._fleet.sim_ms >= int(time.time() * 1000) - 30_000:
                fast = self._fleet
                fast.stop()
                self._fleet = self._make(1.0, fast.sim_ms, fast.next_seq)
                self._fleet.start()
                self._fast = False
                log.info("demo fleet caught up with the clock; now in real time")

    def stop(self) -> None:
        self._stop.set()
        self._watch.join(timeout=5)
        self._fleet.stop()


def _require(value: str | None, name: str) -> str:
    if not value:
        raise ColdchainError(f"{name} is not set")
    return value


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop


def _serve_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app

    app = create_app(settings)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None)


if __name__ == "__main__":
    raise SystemExit(main())
