"""The `coldchain` command: the composition root, which alone may import every package (lazily)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coldchain import __version__
from coldchain.errors import ColdchainError
from coldchain.log import configure_logging
from coldchain.settings import Settings, load_settings

log = logging.getLogger("coldchain")
_IDENTITY_COMMANDS = frozenset({"users", "orgs", "api-keys", "audit"})


DATABASE_NAME = "coldchain"
# The database roles `coldchain db url --role` hands out URLs for (embedded/credentials.py): the
# services' `app` login (coldchain_app), the schema `owner` that migrations run as
# (coldchain_owner), and the cluster's `superuser`. With DATABASE_URL set, the URL as given.
DB_ROLES = ("app", "owner", "superuser")


def _common(parser: argparse.ArgumentParser, *, servers: bool = True) -> None:
    parser.add_argument("--config", type=Path, help="a TOML settings file (same names as the environment)")
    if servers:
        parser.add_argument(
            "--data-dir",
            type=Path,
            help="the installation whose private servers to use when DATABASE_URL / MQTT_URL are not set"
            " (./.coldchain)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldchain", description="Cold-chain telemetry and alerting.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="the whole platform on this machine")
    _common(up)
    up.add_argument("--demo", action="store_true", help="register a demo fleet and simulate it")
    up.add_argument("--http-port", type=int, help="dashboard and API port (8000)")
    up.add_argument("--mqtt-port", type=int, help="port of the private broker (1883, or a free one)")
    up.add_argument("--time-scale", type=float, default=120.0, help="demo: simulated seconds per second")
    up.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="local experiments only: the private broker also takes clients without a login",
    )

    devices = sub.add_parser("devices", help="device credentials for the broker")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    provision = devices_sub.add_parser(
        "provision", help="issue (or rotate) a device's MQTT password and print it once"
    )
    _common(provision)
    provision.add_argument("device_id")
    provision.add_argument("--organization", default="default")
    provision.add_argument("--json", action="store_true", help="print the credential as JSON")
    dev_revoke = devices_sub.add_parser("revoke", help="revoke a device's MQTT password (cuts it off)")
    _common(dev_revoke)
    dev_revoke.add_argument("device_id")
    dev_revoke.add_argument("--organization", default="default")

    for name, text in (
        ("ingest", "the MQTT ingest service"),
        ("rules", "the rules and notification service"),
        ("api", "the HTTP API and dashboard"),
    ):
        _common(sub.add_parser(name, help=text))

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _common(db_sub.add_parser("migrate", help="apply pending migrations"))
    url = db_sub.add_parser("url", help="print a database URL an operator can hand to psql")
    _common(url)
    url.add_argument(
        "--role", choices=DB_ROLES, default="superuser", help="whose URL: app, owner or superuser (default)"
    )

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    _common(create)
    create.add_argument("--name", required=True)
    create.add_argument(
        "--role", required=True, choices=["admin", "qa", "logistics", "driver", "erp", "viewer"]
    )
    create.add_argument("--organization", default="default")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its name")
    _common(revoke)
    revoke.add_argument("--name", required=True)
    revoke.add_argument("--organization", default="default")

    logger_file = sub.add_parser("logger-file", help="logger export files read out after a trip")
    logger_file_sub = logger_file.add_subparsers(dest="logger_file_command", required=True)
    lf_import = logger_file_sub.add_parser("import", help="import a Berlinger .txt or a CSV export")
    _common(lf_import)
    lf_import.add_argument("file", type=Path)
    lf_import.add_argument("--device", help="device id (default: the serial in the file)")
    lf_import.add_argument("--shipment", help="the shipment the logger travelled with")
    lf_import.add_argument("--mapping", type=Path, help="a CSV column mapping (JSON file)")
    lf_import.add_argument("--mapping-name", help="a column mapping saved before")
    lf_import.add_argument("--organization", default="default")
    lf_import.add_argument("--json", action="store_true", help="print the whole report as JSON")

    from erp.cli import add_parser as add_import_parser  # argparse only: cheap to import

    _common(add_import_parser(sub))

    from api import identity_cli  # users, orgs, api-keys, audit

    identity_cli.add_parsers(sub, _common)

    _add_backup_parsers(sub, _common)

    sim = sub.add_parser(
        "sim", help="simulated loggers and fleets (see `coldchain sim --help`)", add_help=False
    )
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)
    evidence = sub.add_parser(
        "evidence", help="verify evidence offline, print the public key", add_help=False
    )
    evidence.add_argument("evidence_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sim"]:
        from firmware_sim.cli import main as sim_main

        return int(sim_main(args_list[1:]))
    if args_list[:1] == ["evidence"]:
        from evidence.cli import main as evidence_main

        return evidence_main(args_list[1:])
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
    import contextlib

    if getattr(args, "data_dir", None) is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    if args.command == "up":
        if args.http_port is not None:
            settings = settings.model_copy(update={"http_port": args.http_port})
        return run_platform(
            settings,
            demo=args.demo,
            mqtt_port=args.mqtt_port,
            time_scale=args.time_scale,
            allow_anonymous=args.allow_anonymous,
        )
    with contextlib.ExitStack() as stack:
        servers = Servers(settings, stack)
        if args.command == "db":
            return _db(args, servers, settings)
        if args.command == "token":
            return _token(args, servers)
        if args.command == "devices":
            return _devices(args, servers, settings)
        if args.command == "logger-file":
            from api.field_data import import_command

            return import_command(args, settings.model_copy(update={"database_url": servers.database_url()}))
        if args.command == "import":
            from erp.cli import run as run_import

            return run_import(args, servers.database_url())
        if args.command in ("backup", "restore"):
            run = _backup if args.command == "backup" else _restore
            return run(args, servers, settings)
        if args.command in _IDENTITY_COMMANDS:
            from api import identity_cli

            return identity_cli.dispatch(args, settings, servers.database_url())
        if args.command in ("rules", "api"):
            settings.require_secret_key()  # ack links and access tokens: no public default key
        stop = _stop_on_signals()
        if args.command == "ingest":
            from ingest.service import run as run_ingest

            update = {"database_url": servers.service_url(), "mqtt_url": servers.mqtt_url()}
            run_ingest(settings.model_copy(update=update), stop)
        elif args.command == "rules":
            _run_rules(settings.model_copy(update={"database_url": servers.service_url()}), stop)
        elif args.command == "api":
            control = servers.mqtt_control_url()
            update = {"database_url": servers.service_url()}
            _serve_api(settings.model_copy(update=update | _control_setting(control)))
    return 0


def _hba_file(superuser_url: str) -> Path:
    """The cluster's pg_hba.conf, where the server says it is (its data folder may have moved)."""
    import psycopg

    with psycopg.connect(superuser_url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW hba_file").fetchone()
    assert row is not None
    return Path(row[0])


class Servers:
    """Where a command finds the database and the broker, as `coldchain up` does: DATABASE_URL and
    MQTT_URL when set, otherwise the private servers of the installation under `data_dir`, started
    if they are not running (and stopped, when the command ends, only if it started them)."""

    def __init__(self, settings: Settings, stack: Any) -> None:
        self._settings = settings
        self._stack = stack
        self._cluster: Any = None
        self._database_url: str | None = None

    @property
    def embedded_database(self) -> bool:
        return self._settings.database_url is None

    @property
    def embedded_broker(self) -> bool:
        return self._settings.mqtt_url is None

    def _announce(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _running_cluster(self, *, keep_running: bool) -> Any:
        if self._cluster is None:
            from embedded.installation import Installation

            self._cluster = Installation(self._settings.data_dir).postgres(announce=self._announce)
            if self._cluster.stop is not None:
                if keep_running:
                    self._announce(
                        f"PostgreSQL of {self._settings.data_dir.resolve()} keeps running on port"
                        f" {self._cluster.port}; `coldchain up` will use it"
                    )
                else:
                    self._stack.callback(self._cluster.stop)
        return self._cluster

    def _credentials(self, cluster: Any) -> Any:
        """The cluster's generated role passwords (made on first start), the cluster switched to
        password authentication and the roles and database in place; safe to run every time."""
        from embedded.credentials import ClusterCredentials, secure_cluster

        data_dir = self._settings.data_dir.resolve()
        creds = ClusterCredentials.ensure(data_dir).with_port(cluster.port)
        secure_cluster(creds.url("superuser"), _hba_file(creds.url("superuser")), creds)
        return creds

    def empty_database_url(self) -> str:
        """The private cluster's platform database as the superuser, created and secured but not
        migrated: what a restore loads a backup into."""
        from embedded.credentials import DATABASE

        creds = self._credentials(self._running_cluster(keep_running=False))
        return str(creds.url("superuser", DATABASE))

    def database_url(self, *, keep_running: bool = False) -> str:
        """The platform's database as its owner (what migrations and the CLI's writes use); in the
        private cluster created, secured and migrated when needed."""
        if self._database_url is None:
            if self._settings.database_url is not None:
                self._database_url = self._settings.database_url
            else:
                from storage.migrate import migrate

                cluster = self._running_cluster(keep_running=keep_running)
                self._credentials(cluster)
                from embedded.credentials import database_url

                self._database_url = database_url(self._settings.data_dir.resolve(), "owner")
                migrate(self._database_url, engine=self._settings.database_engine)
        return self._database_url

    def role_url(self, role: str, *, keep_running: bool = False) -> str:
        """A URL to the platform's database as `role` (see DB_ROLES). DATABASE_URL, when set, is
        the operator's: it is handed back as given for the superuser and refused for the others."""
        if role not in DB_ROLES:
            raise ColdchainError(f"no database role {role!r}; known: {', '.join(DB_ROLES)}")
        url = self.database_url(keep_running=keep_running)
        if not self.embedded_database:
            if role != "superuser":
                raise ColdchainError(
                    f"DATABASE_URL is set: the {role} role of that database is yours to configure"
                )
            return url
        from embedded.credentials import DATABASE, ClusterCredentials

        creds = ClusterCredentials.load(self._settings.data_dir.resolve())
        return creds.url(role, DATABASE)  # every role's URL names the platform's database

    def service_url(self) -> str:
        """What the services connect as: DATABASE_URL, or the installation's `app` role."""
        if not self.embedded_database:
            return self.database_url()
        self.database_url()  # created, secured and migrated first
        return self.role_url("app")

    def mqtt_url(
        self,
        *,
        port: int | None = None,
        account: str = "coldchain-ingest",
        demo: bool = False,
        allow_anonymous: bool = False,
    ) -> str:
        """The broker as `account` (a service account of coldchain/broker_accounts.py): MQTT_URL
        when set, otherwise the private broker, started with authentication on if not running:
        the service accounts' passwords from the data folder, every device credential from the
        database, and the demo fleet's account with `demo`."""
        if self._settings.mqtt_url is not None:
            return self._settings.mqtt_url
        from embedded.installation import Installation

        broker = Installation(self._settings.data_dir).broker(
            port=port,
            announce=self._announce,
            accounts=lambda: self._broker_accounts(demo=demo, allow_anonymous=allow_anonymous),
            allow_anonymous=allow_anonymous,
        )
        if broker.stop is not None:
            self._stack.callback(broker.stop)
        password = self._broker_passwords()[account]
        return broker.url.replace("://", f"://{account}:{password}@", 1)

    def mqtt_control_url(self) -> str | None:
        """The account that changes device credentials on the broker: MQTT_CONTROL_URL, or the
        private broker's control account (None with MQTT_URL and no MQTT_CONTROL_URL)."""
        if self._settings.mqtt_control_url is not None:
            return self._settings.mqtt_control_url.get_secret_value()
        if self._settings.mqtt_url is not None:
            return None
        from coldchain.broker_accounts import CONTROL

        return self.mqtt_url(account=CONTROL)

    def _broker_passwords(self) -> dict[str, str]:
        from coldchain.broker_accounts import SERVICE_ACCOUNTS
        from embedded.credentials import broker_passwords

        return broker_passwords(self._settings.data_dir.resolve(), SERVICE_ACCOUNTS)

    def _broker_accounts(self, *, demo: bool, allow_anonymous: bool) -> dict[str, object]:
        from datetime import UTC, datetime

        from coldchain import broker_accounts
        from coldchain.demo import demo_fleet
        from coldchain.wire import Topics
        from storage import device_credentials
        from storage.db import connect

        with connect(self.database_url()) as conn:
            devices = [(c.mqtt_name, c.password_hash) for c in device_credentials.active(conn)]
        passwords = self._broker_passwords()
        if not demo:
            passwords.pop(broker_accounts.DEMO)
        demo_ids = [lg.device.id for lg in demo_fleet(datetime.now(UTC))[1]] if demo else []
        return broker_accounts.dynsec_document(
            Topics(self._settings.topic_prefix),
            services={name: broker_accounts.hash_password(pw) for name, pw in passwords.items()},
            devices=devices,
            demo_devices=demo_ids,
            allow_anonymous=allow_anonymous,
        )


def _db(args: argparse.Namespace, servers: Servers, settings: Settings) -> int:
    if args.db_command == "url":
        print(servers.role_url(args.role, keep_running=True))
        return 0
    from storage.migrate import migrate

    applied = migrate(servers.database_url(), engine=settings.database_engine)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _control_setting(control_url: str | None) -> dict[str, Any]:
    from pydantic import SecretStr

    return {} if control_url is None else {"mqtt_control_url": SecretStr(control_url)}


def _devices(args: argparse.Namespace, servers: Servers, settings: Settings) -> int:
    """`coldchain devices provision|revoke ID`: as the API's routes do, with the CLI as the actor."""
    import json

    from api import device_credentials
    from coldchain.mqtt_url import BrokerAddress
    from storage import auth
    from storage.db import connect

    settings = settings.model_copy(update=_control_setting(servers.mqtt_control_url()))
    with connect(servers.database_url()) as conn:
        org = auth.org_id(conn, args.organization)
        if args.devices_command == "revoke":
            had = device_credentials.revoke(conn, settings, org=org, device_id=args.device_id, actor="cli")
            print(f"revoked: {args.device_id}" if had else f"{args.device_id} had no credential (none now)")
            return 0
        issued = device_credentials.issue(conn, settings, org=org, device_id=args.device_id, actor="cli")
    broker = BrokerAddress.parse(servers.mqtt_url()) if servers.embedded_broker else None
    if args.json:
        out = {"username": issued.username, "password": issued.password, "topics": list(issued.topics)}
        print(json.dumps(out))
        return 0
    print(f"username: {issued.username}")
    print(f"password: {issued.password}   (shown once: store it on the device now)")
    print(f"topics:   {', '.join(issued.topics)}")
    if broker is not None:
        print(
            f"try:      mosquitto_pub -h {broker.host} -p {broker.port} -u {issued.device_id}"
            f" -P '<password>' -q 1 -t {issued.topics[1]} -m '{{\"state\":\"online\"}}'"
        )
    return 0


def _token(args: argparse.Namespace, servers: Servers) -> int:
    from coldchain.access import Role
    from storage import auth
    from storage.db import connect

    with connect(servers.database_url()) as conn, conn.transaction():
        org = auth.org_id(conn, args.organization)
        if args.token_command == "revoke":
            auth.revoke_token(conn, org=org, name=args.name, actor="cli")
            print(f"revoked: {args.name}")
            return 0
        token = auth.create_token(conn, org=org, name=args.name, role=Role(args.role), actor="cli")
    print(token)
    return 0


# --------------------------------------------------------------------------- coldchain up


def run_platform(
    settings: Settings, *, demo: bool, mqtt_port: int | None, time_scale: float, allow_anonymous: bool = False
) -> int:
    """Every service in one process tree; private servers when no DATABASE_URL / MQTT_URL."""
    import contextlib

    import uvicorn

    from api.app import create_app
    from coldchain.wire import Topics
    from embedded.process import free_port, port_is_free
    from erp.service import ErpService
    from evidence.attach import EvidenceRecorder, verify_url
    from ingest.service import IngestService
    from notify.service import NotificationService
    from rules.service import RulesService
    from storage.db import open_pool
    from storage.migrate import migrate

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = _ensure_secret_key(settings, data_dir)
    with contextlib.ExitStack() as stack:
        servers = Servers(settings, stack)
        # Embedded: password authentication with generated secrets; migrations as the owner,
        # services as the app role. With DATABASE_URL, that URL for both.
        migrate(servers.database_url(), engine=settings.database_engine)
        dsn = servers.service_url()  # everything from here on runs as the application role
        # The broker with authentication on: ingest, the API and the demo fleet log in with their
        # own accounts, each device with its own credential (docs/device-credentials.md).
        mqtt_url = servers.mqtt_url(port=mqtt_port, demo=demo, allow_anonymous=allow_anonymous)
        control = _control_setting(servers.mqtt_control_url())
        settings = settings.model_copy(update={"database_url": dsn, "mqtt_url": mqtt_url} | control)
        token, fresh = _bootstrap_token(settings, dsn, data_dir)
        from api.identity_cli import Checkpoints, platform_signer

        sign, key_id = platform_signer(settings)  # the audit heads, signed with the platform key now and then
        stack.callback(Checkpoints(dsn, sign, key_id, settings.audit_checkpoint_interval_s).start().stop)
        topics = Topics(settings.topic_prefix)

        ingest = IngestService(dsn=dsn, mqtt_url=mqtt_url, topics=topics, settings=settings)
        ingest.start()
        stack.callback(ingest.stop)
        rules = RulesService(dsn=dsn, settings=settings)
        rules.start()
        stack.callback(rules.stop)
        notifier = NotificationService(dsn=dsn, settings=settings)
        notifier.start()
        stack.callback(notifier.stop)
        recorder = EvidenceRecorder(dsn=dsn, data_dir=data_dir, verify_url=verify_url(settings))
        recorder.start()  # makes the evidence signing key on the first start
        stack.callback(recorder.stop)
        erp_push = ErpService(dsn=dsn, settings=settings, verify_url=verify_url(settings)).start()
        stack.callback(erp_push.stop)
        if demo:
            from coldchain.broker_accounts import DEMO

            demo_url = servers.mqtt_url(account=DEMO) if servers.embedded_broker else mqtt_url
            fleet = _start_demo(dsn, demo_url, topics, time_scale)
            stack.callback(fleet.stop)

        if not port_is_free(settings.http_port):
            busy, port = settings.http_port, free_port()
            print(f"port {busy} is busy; serving the API and dashboard on {port} instead", flush=True)
            settings = settings.model_copy(update={"http_port": port})
        pool = stack.enter_context(open_pool(dsn, min_size=1, max_size=10, name="api"))
        # The API logs in as its own account, which may publish each device's retained config.
        from coldchain.broker_accounts import API

        api_mqtt = servers.mqtt_url(account=API) if servers.embedded_broker else mqtt_url
        app = create_app(settings.model_copy(update={"mqtt_url": api_mqtt}), pool=pool)
        url = f"http://{settings.http_host}:{settings.http_port}/dashboard"
        print(f"\ncoldchain is up.\n  dashboard: {url}" + (f"#token={token}" if fresh else ""), flush=True)
        print(f"  API:       http://{settings.http_host}:{settings.http_port}/docs", flush=True)
        from coldchain.mqtt_url import BrokerAddress

        print(f"  MQTT:      {BrokerAddress.parse(mqtt_url).display()}", flush=True)
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
    from storage import readings, registry
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
        last_ms = readings.last_reading_ms(conn, device_id_prefix="DEMO-")
        if last_ms is not None:
            resume_ms = last_ms + 60_000
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


def _run_rules(settings: Settings, stop: threading.Event) -> None:
    """`coldchain rules`: the rules service, the notification service, the evidence recorder and
    the ERP outbox, until `stop` is set."""
    from erp.service import ErpService
    from evidence.attach import EvidenceRecorder, verify_url
    from notify.service import NotificationService
    from rules.service import RulesService

    dsn = _require(settings.database_url, "DATABASE_URL")
    recorder = EvidenceRecorder(
        dsn=dsn, data_dir=settings.data_dir.resolve(), verify_url=verify_url(settings)
    )
    with (
        RulesService(dsn=dsn, settings=settings),
        NotificationService(dsn=dsn, settings=settings),
        ErpService(dsn=dsn, settings=settings, verify_url=verify_url(settings)),
    ):
        recorder.start()  # makes the evidence signing key on the first start
        try:
            stop.wait()
        finally:
            recorder.stop()


def _serve_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app

    app = create_app(settings)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None)


# -- backup and restore: the installation (embedded/), the database (storage/) and the audit check.
# A restore goes into an empty installation only, and ends by proving what it restored: the audit
# trail verified, link by link, against the heads the backup recorded.


def _add_backup_parsers(sub: Any, common: Any) -> None:
    made = sub.add_parser("backup", help="the database, keys and evidence files in one archive")
    common(made)
    made.add_argument("file", type=Path, help="the archive to write (a tar file, mode 0600)")
    back = sub.add_parser("restore", help="an archive into an empty installation, then verified")
    common(back)
    back.add_argument("file", type=Path, help="an archive written by `coldchain backup`")


def _superuser_url(servers: Any, settings: Any) -> str:
    return servers.role_url("superuser") if servers.embedded_database else str(settings.database_url)


def _backup(args: argparse.Namespace, servers: Any, settings: Any) -> int:
    import psycopg

    from embedded import backup as archive
    from storage import backup as store

    servers.database_url()  # the embedded cluster started, secured and migrated
    url = _superuser_url(servers, settings)
    with psycopg.connect(url, autocommit=True) as conn:
        facts = store.facts(conn)
    target = args.file.resolve()
    with tempfile.TemporaryDirectory(prefix="coldchain-backup-") as tmp:
        dump = Path(tmp) / archive.DATABASE_MEMBER
        store.dump(url, dump)
        members = [(archive.DATABASE_MEMBER, dump), *archive.data_files(settings.data_dir.resolve())]
        doc = archive.write(
            target,
            members,
            {
                "created_at": datetime.now(UTC).isoformat(),
                "platform_version": __version__,
                "database": facts.to_dict(),
            },
        )
    size = target.stat().st_size
    print(f"backup written: {target} ({size:,} bytes, {len(doc['files'])} files,"
          f" {len(facts.migrations)} migrations, TimescaleDB {facts.timescaledb or 'no'})")
    print("it holds the platform's signing key and secrets: keep it as safe as the data folder")
    return 0


def _restore(args: argparse.Namespace, servers: Any, settings: Any) -> int:
    import psycopg

    from embedded import backup as archive
    from storage import audit
    from storage import backup as store
    from storage.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="coldchain-restore-") as tmp:
        unpacked = Path(tmp)
        try:
            doc = archive.read(args.file.resolve(), unpacked)
        except archive.BackupError as exc:
            raise ColdchainError(str(exc)) from None
        recorded = store.DatabaseFacts.from_dict(doc["database"])
        superuser = servers.empty_database_url() if servers.embedded_database else str(settings.database_url)
        with psycopg.connect(superuser, autocommit=True) as conn:
            if store.holds_data(conn):
                raise ColdchainError("the installation already holds a platform; restore into an empty one")
        _restore_files(unpacked / "data", settings.data_dir.resolve())
        hypertables = recorded.timescaledb is not None
        store.restore(superuser, unpacked / archive.DATABASE_MEMBER, timescaledb=hypertables)
    owner = servers.database_url()
    migrate(owner, engine=settings.database_engine)  # newer migrations, grants, released presets
    with psycopg.connect(owner, autocommit=True) as conn:
        verdict = audit.verify_trail(conn)
        now = store.facts(conn)
    heads_match = all(now.audit_heads.get(org) == head for org, head in recorded.audit_heads.items())
    print(f"restored {args.file}: {len(recorded.migrations)} migrations from the backup,"
          f" audit trail {'intact' if verdict.intact else 'BROKEN'} ({verdict.rows} rows),"
          f" heads {'as recorded' if heads_match else 'DIFFERENT from the backup'}")
    if not verdict.intact:
        print(f"coldchain: audit trail broken at row {verdict.row_id}: {verdict.reason}", file=sys.stderr)
    return 0 if verdict.intact and heads_match else 1


def _restore_files(source: Path, data_dir: Path) -> None:
    """The backup's data-folder files into `data_dir`: keys, secrets and evidence bundles. The
    database passwords an installation already made for its own cluster stay its own."""
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(source)
        target = data_dir / relative
        if relative.parts[0] == "secrets" and relative.name.startswith("postgres-") and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative.parts[0] == "secrets":
            target.parent.chmod(0o700)
        shutil.copy2(path, target)
        target.chmod(0o600)


if __name__ == "__main__":
    raise SystemExit(main())
