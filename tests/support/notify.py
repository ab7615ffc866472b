"""What the notification tests share: numbers and secrets of the stand-in Twilio account, a
controllable clock, contacts, policies and alerts in the database, a mailbox (aiosmtpd), the real
API on a port for Twilio's callbacks, and a carrier that sends those callbacks."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
import uvicorn
from aiosmtpd.controller import Controller

from api.app import create_app
from coldchain.domain import Severity, Shipment
from coldchain.settings import Settings
from storage import notify_directory, notify_outbox, registry
from storage.alerts import NewAlert, raise_alert
from storage.db import open_pool
from storage.notify_directory import ContactRow
from tests.support.net import free_port
from tests.support.twilio_stub import TwilioStub
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


ACCOUNT_SID = "AC" + "3c" * 16


AUTH_TOKEN = "outbox-test-auth-token-0123456789"


SECRET_KEY = "s" * 40


FROM = "+15005550006"


DRIVER = "+4915100000001"


DISPATCHER = "+4915100000002"


QA = "+4915100000003"


class Clock:
    """Real time plus an offset the test moves forward: `clock.advance(600)` is ten minutes on."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)

    def set(self, moment: datetime) -> None:
        self.offset_ms = int(moment.timestamp() * 1000) - int(time.time() * 1000)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self() / 1000, tz=UTC)


def notify_settings(
    dsn: str,
    stub: TwilioStub,
    *,
    public_url: str | None = None,
    smtp_port: int | None = None,
    secret_key: str = SECRET_KEY,
    from_number: str = FROM,
) -> Settings:
    """Settings that send SMS and calls to the stub's account (and e-mail to `smtp_port`)."""
    return Settings(
        database_url=dsn,
        secret_key=secret_key,
        public_url=public_url,
        twilio_account_sid=stub.account_sid,
        twilio_auth_token=stub.auth_token,
        twilio_from=from_number,
        twilio_api_base_url=stub.base_url,
        smtp_host="127.0.0.1" if smtp_port else None,
        smtp_port=smtp_port or 587,
        smtp_from="Coldchain <alerts@coldchain.example>",
        smtp_security="none",
    )


def add_contact(db: psycopg.Connection, contact_id: str, roles: tuple[str, ...], **fields: Any) -> None:
    notify_directory.upsert_contact(
        db, ContactRow(org_id=1, id=contact_id, name=contact_id.title(), roles=roles, **fields), actor="test"
    )


def add_shipment(db: psycopg.Connection, shipment_id: str = "SO-1", origin: str = "Plant A") -> int:
    with db.transaction():
        registry.create_shipment(
            db,
            org=1,
            shipment=Shipment(id=shipment_id, origin=origin, destination="Hospital B"),
            profile_version=1,
            actor="test",
        )
    return registry.get_shipment(db, org=1, shipment_id=shipment_id).key


def open_alert(
    db: psycopg.Connection, shipment_key: int, episode: str, severity: Severity = Severity.CRITICAL
) -> int:
    with db.transaction():
        alert_id, opened = raise_alert(
            db,
            NewAlert(
                org_id=1,
                episode_key=episode,
                kind="single",
                severity=severity,
                message="above 8 °C (H1) for 31 min, peak 11.0 °C",
                shipment_key=shipment_key,
                limit_id="H1",
                peak_c=11.0,
            ),
        )
    assert opened
    return alert_id


def set_policy(db: psycopg.Connection, tiers: list[dict[str, Any]], **extra: Any) -> None:
    notify_directory.put_policy(
        db, org=1, policy_id="night", body={"tiers": tiers, **extra}, actor="test", default=True
    )


def outbox_states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return notify_outbox.outbox_counts(conn)


def settled(dsn: str, clock: Clock | None = None) -> bool:
    """Nothing is mid-send and nothing pending is due (by `clock`, else real time)."""
    now = clock.now() if clock is not None else datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM notify_outbox WHERE state = 'sending'"
            " OR (state = 'pending' AND next_attempt_at <= %s)",
            (now,),
        ).fetchone()
    return row is not None and row[0] == 0


def sms_to(stub: TwilioStub, number: str) -> int:
    return sum(1 for r in stub.requests if r.kind == "Messages" and r.sid and r.field("To") == number)


def complete_requests(stub: TwilioStub) -> list[Any]:
    """Messages the stub accepted (a form cut off by a kill -9 mid-request is refused by the stub,
    as Twilio would refuse it; this also skips requests that carried no status callback)."""
    return [r for r in stub.requests if r.sid and r.field("StatusCallback")]


def callback_key(request: Any) -> str | None:
    url = request.field("StatusCallback") or ""
    return dict(parse_qsl(urlsplit(url).query)).get("notification")


class Mailbox:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
        return "250 OK"


class ApiServer:
    """The real API on a free port (uvicorn in a thread), for Twilio's callbacks to reach."""

    def __init__(self, settings: Settings, dsn: str) -> None:
        self._pool = open_pool(dsn, max_size=4, name="notify-test-api")
        port = int(urlsplit(settings.public_url or "").port or 0)
        config = uvicorn.Config(
            create_app(settings, pool=self._pool), host="127.0.0.1", port=port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="test-api", daemon=True)

    def __enter__(self) -> ApiServer:
        self._thread.start()
        wait_until(lambda: self._server.started, what="the API to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._pool.close()


class Carrier:
    """Plays Twilio's side after a send: every message the stub accepted gets a signed `sent`
    status callback to the API, as Twilio reports delivery progress."""

    def __init__(self, stub: TwilioStub) -> None:
        self._stub = stub
        self._done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carrier", daemon=True)
        self.statuses: collections.Counter[int] = collections.Counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            for request in complete_requests(self._stub):
                if request.sid not in self._done:
                    self._done.add(request.sid)
                    self.statuses[self._stub.send_status_callback(request.sid, "sent")] += 1
            self._stop.wait(0.01)

    def __enter__(self) -> Carrier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def stub() -> Iterator[TwilioStub]:
    with TwilioStub(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as running:
        yield running


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def start_notifier(
    dsn: str, stub: TwilioStub, *, public_url: str, secret_key: str = SECRET_KEY, from_number: str = FROM
) -> subprocess.Popen[bytes]:
    """`python -m notify` as its own process (a short grace and tick), talking to the stub."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": dsn,
        "PUBLIC_URL": public_url,
        "SECRET_KEY": secret_key,
        "TWILIO_ACCOUNT_SID": stub.account_sid,
        "TWILIO_AUTH_TOKEN": stub.auth_token,
        "TWILIO_FROM": from_number,
        "TWILIO_API_BASE_URL": stub.base_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "notify", "--grace-s", "3", "--tick-s", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
