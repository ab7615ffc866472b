"""Device credentials on the real broker: Mosquitto with its dynamic-security plugin, accounts
issued and revoked through the API. A device without credentials, or with another's, is refused;
a device publishes only its own topics; a revoked (or rotated) device is cut off at once; the
broker rebuilt from the database's hashes takes the same passwords."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from coldchain import broker_accounts
from coldchain.access import Role
from coldchain.domain import Device
from coldchain.settings import Settings
from coldchain.wire import Topics
from embedded import MosquittoServer
from embedded.process import free_port
from storage import auth, device_credentials, registry
from tests.support.api import api_client
from tests.support.waiting import wait_for

TOPICS = Topics("")


class Link:
    """One MQTT v5 client: the broker's answer to its CONNECT, its PUBACKs, its messages, and
    whether the broker cut it off."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.connack: Any = None
        self.disconnected: Any = None
        self.pubacks: dict[int, Any] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._answered = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.pubacks.__setitem__(mid, reason)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.reconnect_delay_set(30, 30)  # a refused client must not come back by itself
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self._answered.wait(10), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self._answered.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.disconnected = reason
        self._answered.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes = b"{}") -> Any:
        """PUBACK's reason code for one QoS 1 publish."""
        info = self.client.publish(topic, payload, qos=1)
        return wait_for(lambda: self.pubacks.get(info.mid), timeout=10, what="PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _link(port: int, username: str | None = None, password: str | None = None) -> Link:
    link = Link(port, username, password)
    links.append(link)
    return link


links: list[Link] = []


@pytest.fixture
def broker() -> Iterator[tuple[MosquittoServer, dict[str, str]]]:
    """A broker with authentication on: the control and ingest accounts, no device yet."""
    passwords = {
        name: broker_accounts.new_secret() for name in (broker_accounts.CONTROL, broker_accounts.INGEST)
    }
    doc = broker_accounts.dynsec_document(
        TOPICS, services={n: broker_accounts.hash_password(p) for n, p in passwords.items()}, devices=[]
    )
    server = MosquittoServer(accounts=doc).start()
    yield server, passwords
    for link in links:
        link.close()
    links.clear()
    server.destroy()


def _settings(db_dsn: str, server: MosquittoServer, passwords: dict[str, str]) -> Settings:
    control = f"mqtt://{broker_accounts.CONTROL}:{passwords[broker_accounts.CONTROL]}@127.0.0.1:{server.port}"
    return Settings(database_url=db_dsn, mqtt_control_url=SecretStr(control))


def _register(db: psycopg.Connection, *ids: str) -> str:
    for device_id in ids:
        registry.create_device(db, org=1, device=Device(id=device_id), actor="t")
    return auth.create_token(
        db, org=1, name=f"logistics-{uuid.uuid4().hex[:6]}", role=Role.LOGISTICS, actor="t"
    )


def test_only_a_device_with_its_own_credential_gets_in_and_only_to_its_own_topics(
    db: psycopg.Connection, db_dsn: str, broker: tuple[MosquittoServer, dict[str, str]]
) -> None:
    server, passwords = broker
    token = _register(db, "DEV-A", "DEV-B", "DEV-C")
    with api_client(db_dsn, _settings(db_dsn, server, passwords), token=token) as client:
        a = client.post("/api/v1/devices/DEV-A/credentials")
        b = client.post("/api/v1/devices/DEV-B/credentials")
    assert a.status_code == 201, a.text
    assert b.status_code == 201, b.text
    pw_a, pw_b = a.json()["password"], b.json()["password"]
    assert a.json()["username"] == "DEV-A" and a.json()["replaced"] is False
    assert pw_a != pw_b

    # The database keeps a $7$ hash that verifies, never the password.
    row = db.execute("SELECT mqtt_password_hash, devices::text FROM devices WHERE id = 'DEV-A'").fetchone()
    assert row is not None and row[0].startswith("$7$")
    assert broker_accounts.verify_password(pw_a, row[0]) and not broker_accounts.verify_password(pw_b, row[0])
    assert pw_a not in row[1]

    port = server.port
    assert not _link(port).accepted  # no credentials at all
    assert not _link(port, "DEV-B", pw_a).accepted  # another device's password
    assert not _link(port, "DEV-C", pw_a).accepted  # a registered device that was never issued one
    assert not _link(port, "DEV-A", pw_a + "x").accepted

    ingest = _link(port, broker_accounts.INGEST, passwords[broker_accounts.INGEST])
    assert ingest.accepted
    ingest.client.subscribe(TOPICS.shared_readings(), qos=1)
    dev_a = _link(port, "DEV-A", pw_a)
    assert dev_a.accepted
    # Its own topic: delivered. Another device's topic: the broker says no, nothing is delivered.
    wait_for(
        lambda: not dev_a.publish(TOPICS.readings("DEV-A"), b"mine").is_failure and ingest.messages,
        timeout=10,
        what="the device's own reading at ingest",
    )
    assert dev_a.publish(TOPICS.readings("DEV-B"), b"forged").getName() == "Not authorized"
    assert dev_a.publish(TOPICS.config("DEV-B"), b"forged").getName() == "Not authorized"
    dev_a.publish(TOPICS.status("DEV-A"), b"{}")
    dev_a.publish(TOPICS.readings("DEV-A"), b"mine again")
    wait_for(lambda: len(ingest.messages) >= 2, timeout=10, what="the second reading")
    assert all(topic == TOPICS.readings("DEV-A") for topic, _ in ingest.messages)
    assert b"forged" not in [payload for _, payload in ingest.messages]


def test_a_revoked_device_is_cut_off_and_stays_out(
    db: psycopg.Connection, db_dsn: str, broker: tuple[MosquittoServer, dict[str, str]]
) -> None:
    server, passwords = broker
    token = _register(db, "DEV-R")
    with api_client(db_dsn, _settings(db_dsn, server, passwords), token=token) as client:
        password = client.post("/api/v1/devices/DEV-R/credentials").json()["password"]
        device = _link(server.port, "DEV-R", password)
        assert device.accepted and device.disconnected is None
        res = client.delete("/api/v1/devices/DEV-R/credentials")
        assert res.status_code == 204, res.text
        # The live session is closed by the broker, not left to run until it reconnects.
        wait_for(lambda: device.disconnected is not None, timeout=10, what="the revoked session to be cut")
        assert not _link(server.port, "DEV-R", password).accepted
        assert client.delete("/api/v1/devices/DEV-R/credentials").status_code == 204  # again: no-op
    row = db.execute("SELECT mqtt_password_hash FROM devices WHERE id = 'DEV-R'").fetchone()
    assert row == (None,)
    actions = [
        r[0]
        for r in db.execute(
            "SELECT action FROM audit_trail WHERE entity = 'device' AND entity_key = 'DEV-R' ORDER BY id"
        ).fetchall()
    ]
    assert actions == ["create", "issue credentials", "revoke credentials"]


def test_rotation_revokes_the_old_password_and_its_session(
    db: psycopg.Connection, db_dsn: str, broker: tuple[MosquittoServer, dict[str, str]]
) -> None:
    server, passwords = broker
    token = _register(db, "DEV-ROT")
    with api_client(db_dsn, _settings(db_dsn, server, passwords), token=token) as client:
        old = client.post("/api/v1/devices/DEV-ROT/credentials").json()["password"]
        session = _link(server.port, "DEV-ROT", old)
        assert session.accepted
        again = client.post("/api/v1/devices/DEV-ROT/credentials").json()
    assert again["replaced"] is True
    wait_for(lambda: session.disconnected is not None, timeout=10, what="the old session to be cut")
    assert not _link(server.port, "DEV-ROT", old).accepted
    assert _link(server.port, "DEV-ROT", again["password"]).accepted


def test_roles_tenants_and_a_broker_that_is_down(
    db: psycopg.Connection, db_dsn: str, broker: tuple[MosquittoServer, dict[str, str]]
) -> None:
    server, passwords = broker
    _register(db, "DEV-X")
    settings = _settings(db_dsn, server, passwords)
    driver = auth.create_token(db, org=1, name="driver", role=Role.DRIVER, actor="t")
    erp = auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="t")
    other = auth.create_organization(db, "acme", "Acme")
    with api_client(db_dsn, settings) as client:
        for who in (driver, erp):
            res = client.post("/api/v1/devices/DEV-X/credentials", headers={"Authorization": f"Bearer {who}"})
            assert res.status_code == 403, res.text
        acme = auth.create_token(db, org=other, name="acme-admin", role=Role.ADMIN, actor="t")
        res = client.post("/api/v1/devices/DEV-X/credentials", headers={"Authorization": f"Bearer {acme}"})
        assert res.status_code == 404, res.text  # another tenant's device is not to be known
    admin = auth.create_token(db, org=1, name="admin", role=Role.ADMIN, actor="t")
    down = f"mqtt://{broker_accounts.CONTROL}:{passwords[broker_accounts.CONTROL]}@127.0.0.1:{free_port()}"
    with api_client(
        db_dsn, Settings(database_url=db_dsn, mqtt_control_url=SecretStr(down)), token=admin
    ) as client:
        res = client.post("/api/v1/devices/DEV-X/credentials")
        assert res.status_code == 503, res.text
        assert res.json()["error"] == "BrokerUnavailableError"
        assert client.post("/api/v1/devices/NOPE/credentials").status_code == 404
    with api_client(db_dsn, Settings(database_url=db_dsn), token=admin) as client:  # no control account
        assert client.post("/api/v1/devices/DEV-X/credentials").status_code == 503
    assert db.execute("SELECT mqtt_password_hash FROM devices WHERE id = 'DEV-X'").fetchone() == (None,)


def test_a_broker_built_from_the_database_takes_the_issued_passwords(
    db: psycopg.Connection, db_dsn: str, broker: tuple[MosquittoServer, dict[str, str]]
) -> None:
    """What `coldchain up` does at every start: the account file from the database's hashes."""
    server, passwords = broker
    token = _register(db, "DEV-K", "DEV-L")
    with api_client(db_dsn, _settings(db_dsn, server, passwords), token=token) as client:
        kept = client.post("/api/v1/devices/DEV-K/credentials").json()["password"]
        gone = client.post("/api/v1/devices/DEV-L/credentials").json()["password"]
        assert client.delete("/api/v1/devices/DEV-L/credentials").status_code == 204
    creds = device_credentials.active(db)
    assert [c.mqtt_name for c in creds] == ["DEV-K"]
    doc = broker_accounts.dynsec_document(
        TOPICS, services={}, devices=[(c.mqtt_name, c.password_hash) for c in creds]
    )
    with MosquittoServer(accounts=doc) as rebuilt:
        assert _link(rebuilt.port, "DEV-K", kept).accepted
        assert not _link(rebuilt.port, "DEV-L", gone).accepted
        assert not _link(rebuilt.port).accepted


def test_password_hash_format_matches_mosquitto_passwd() -> None:
    """The same `$7$` text mosquitto_passwd writes, so a password file can be made from it too."""
    hashed = broker_accounts.hash_password("s3cret", salt=b"0123456789ab", iterations=101)
    assert hashed.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert broker_accounts.verify_password("s3cret", hashed)
    assert not broker_accounts.verify_password("s3cret!", hashed)
    with pytest.raises(ValueError):
        broker_accounts.PasswordHash.parse("$6$rounds$salt$hash")


def test_allow_anonymous_is_explicit_and_only_for_telemetry() -> None:
    """`coldchain up --allow-anonymous`: a client without a login may publish and read telemetry
    (local experiments); without the flag the same client is refused (the tests above)."""
    doc = broker_accounts.dynsec_document(TOPICS, services={}, devices=[], allow_anonymous=True)
    with MosquittoServer(accounts=doc, allow_anonymous=True) as server:
        anonymous = _link(server.port)
        assert anonymous.accepted
        assert not anonymous.publish(TOPICS.readings("ANY-1"), b"{}").is_failure
        assert anonymous.publish("$CONTROL/dynamic-security/v1", b"{}").getName() == "Not authorized"
        for link in links:
            link.close()
        links.clear()
    closed = broker_accounts.dynsec_document(TOPICS, services={}, devices=[])
    with MosquittoServer(accounts=closed) as server:
        assert not _link(server.port).accepted


def test_concurrent_changes_each_get_their_own_answer(broker: tuple[MosquittoServer, dict[str, str]]) -> None:
    """All control clients read one response topic; each change waits for its own answer."""
    server, passwords = broker
    control = broker_accounts.BrokerControl(
        f"mqtt://{broker_accounts.CONTROL}:{passwords[broker_accounts.CONTROL]}@127.0.0.1:{server.port}",
        TOPICS,
    )
    ids = [f"PAR-{i}" for i in range(6)]
    errors: list[BaseException] = []

    def grant(device_id: str) -> None:
        try:
            control.grant_device(device_id, f"pw-{device_id}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=grant, args=(d,)) for d in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    for device_id in ids:
        assert _link(server.port, device_id, f"pw-{device_id}").accepted


def test_two_organizations_each_have_their_own_trk_9_on_the_broker(
    db: psycopg.Connection, db_dsn: str, broker: tuple[MosquittoServer, dict[str, str]]
) -> None:
    """Device ids are unique per organization: a second tenant's "TRK-9" is registered, not
    refused, and goes by `acme~TRK-9` on the broker; neither can publish as the other."""
    server, passwords = broker
    acme = auth.create_organization(db, "acme", "Acme Logistics")
    ours = _register(db, "TRK-9")
    theirs = auth.create_token(db, org=acme, name="acme-ops", role=Role.LOGISTICS, actor="t")
    settings = _settings(db_dsn, server, passwords)
    with api_client(db_dsn, settings, token=theirs) as client:
        made = client.post("/api/v1/devices", json={"id": "TRK-9"})
        assert made.status_code == 201, made.text
        assert made.json()["mqtt_name"] == "acme~TRK-9"
        assert client.post("/api/v1/devices", json={"id": "TRK-9"}).status_code == 409  # its own twice
        acme_login = client.post("/api/v1/devices/TRK-9/credentials").json()
    with api_client(db_dsn, settings, token=ours) as client:
        assert client.get("/api/v1/devices/TRK-9").json()["mqtt_name"] == "TRK-9"
        our_login = client.post("/api/v1/devices/TRK-9/credentials").json()
    assert (acme_login["device"], acme_login["username"]) == ("TRK-9", "acme~TRK-9")
    assert acme_login["topics"] == [TOPICS.readings("acme~TRK-9"), TOPICS.status("acme~TRK-9")]
    assert our_login["username"] == "TRK-9"

    theirs_link = _link(server.port, "acme~TRK-9", acme_login["password"])
    ours_link = _link(server.port, "TRK-9", our_login["password"])
    assert theirs_link.accepted and ours_link.accepted
    assert not _link(server.port, "acme~TRK-9", our_login["password"]).accepted
    assert not theirs_link.publish(TOPICS.readings("acme~TRK-9")).is_failure
    assert theirs_link.publish(TOPICS.readings("TRK-9")).getName() == "Not authorized"
    assert ours_link.publish(TOPICS.readings("acme~TRK-9")).getName() == "Not authorized"
    assert not ours_link.publish(TOPICS.readings("TRK-9")).is_failure
    keys = db.execute(
        "SELECT org_id, id, mqtt_name FROM devices WHERE id = 'TRK-9' ORDER BY org_id"
    ).fetchall()
    assert keys == [(1, "TRK-9", "TRK-9"), (acme, "TRK-9", "acme~TRK-9")]
