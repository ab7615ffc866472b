"""Broker accounts: each device's MQTT password, the platform's own service accounts, and the
Mosquitto dynamic-security commands that put them into force on a running broker.

Why dynamic security rather than a password file and SIGHUP: both take effect in milliseconds on
Mosquitto 2.0 (docs/device-credentials.md has the figures), but the plugin is reached over MQTT,
so `coldchain devices provision` and the API can change accounts from any process, and deleting
a client disconnects its live session at once. The password file's `$7$` (PBKDF2-SHA512) format
is what the database keeps, so a broker's account file can always be rebuilt from the database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from coldchain.errors import BrokerUnavailableError, ConfigurationError
from coldchain.mqtt_url import BrokerAddress
from coldchain.wire import Topics

ITERATIONS = 1000  # the secrets are 256-bit random, so the count guards nothing a guess could reach
SALT_BYTES = 12  # what mosquitto_passwd uses
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"

# The platform's own accounts: who may do what on the broker (see service_roles()).
CONTROL = "coldchain-control"  # changes accounts (the API and `coldchain devices`)
INGEST = "coldchain-ingest"  # reads every device's readings and status
API = "coldchain-api"  # publishes each device's retained config
DEMO = "coldchain-demo"  # the simulated demo fleet, for the demo devices only
SERVICE_ACCOUNTS = (CONTROL, INGEST, API, DEMO)


def new_secret() -> str:
    """A device or service password: 256 random bits, URL-safe (fits an MQTT_URL unquoted)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Mosquitto's `$7$` format: `$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>`."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True, slots=True)
class PasswordHash:
    iterations: int
    salt: str  # base64
    digest: str  # base64

    @classmethod
    def parse(cls, hashed: str) -> PasswordHash:
        parts = hashed.split("$")
        if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
            raise ValueError("not a $7$ (PBKDF2-SHA512) password hash")
        return cls(iterations=int(parts[2]), salt=parts[3], digest=parts[4])


def verify_password(password: str, hashed: str) -> bool:
    parsed = PasswordHash.parse(hashed)
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(parsed.salt), parsed.iterations
    )
    return hmac.compare_digest(base64.b64encode(digest).decode(), parsed.digest)


def device_role(mqtt_name: str) -> str:
    return f"device:{mqtt_name}"


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def device_acls(topics: Topics, mqtt_name: str) -> list[dict[str, Any]]:
    """A device publishes its own readings and status, and reads its own config: nothing else."""
    return [
        _acl("publishClientSend", topics.readings(mqtt_name)),
        _acl("publishClientSend", topics.status(mqtt_name)),
        _acl("subscribePattern", topics.config(mqtt_name)),
    ]


def service_roles(topics: Topics, demo_devices: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """The ACLs of each service account (its role has the account's name)."""
    demo = [acl for device in demo_devices for acl in device_acls(topics, device)[:2]]
    return {
        CONTROL: [
            _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
            _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
            _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
        ],
        INGEST: [
            _acl("subscribePattern", topics.shared_readings()),  # the plugin sees $share/... as is
            _acl("subscribePattern", topics.all_readings),
            _acl("subscribePattern", topics.all_status),
        ],
        API: [_acl("publishClientSend", f"{topics.root}/+/config")],
        DEMO: demo,
    }


def _client(username: str, hashed: str, role: str) -> dict[str, Any]:
    parsed = PasswordHash.parse(hashed)
    return {
        "username": username,
        "password": parsed.digest,
        "salt": parsed.salt,
        "iterations": parsed.iterations,
        "roles": [{"rolename": role}],
    }


ANONYMOUS_GROUP = "anonymous"


def dynsec_document(
    topics: Topics,
    *,
    services: Mapping[str, str],
    devices: Iterable[tuple[str, str]],
    demo_devices: Iterable[str] = (),
    allow_anonymous: bool = False,
) -> dict[str, Any]:
    """The plugin's whole account file, from the service hashes and each device's (MQTT name, hash): what
    the broker starts with, so the database stays the one record of who may connect."""
    roles = [{"rolename": name, "acls": acls} for name, acls in service_roles(topics, demo_devices).items()]
    clients = [_client(name, hashed, name) for name, hashed in services.items()]
    for mqtt_name, hashed in devices:
        roles.append({"rolename": device_role(mqtt_name), "acls": device_acls(topics, mqtt_name)})
        clients.append(_client(mqtt_name, hashed, device_role(mqtt_name)))
    doc: dict[str, Any] = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    if allow_anonymous:  # local experiments only: anyone may publish and read telemetry
        root = topics.root
        roles.append(
            {
                "rolename": ANONYMOUS_GROUP,
                "acls": [_acl("publishClientSend", f"{root}/#"), _acl("subscribePattern", f"{root}/#")],
            }
        )
        doc["groups"] = [{"groupname": ANONYMOUS_GROUP, "roles": [{"rolename": ANONYMOUS_GROUP}]}]
        doc["anonymousGroup"] = ANONYMOUS_GROUP
    return doc


class BrokerControl:
    """Account changes on a running Mosquitto through its dynamic-security plugin, one MQTT
    request and its response per change. `url` carries the control account's credentials."""

    def __init__(self, url: str, topics: Topics, *, timeout_s: float = 10.0) -> None:
        self._address = BrokerAddress.parse(url)
        if not self._address.username:
            raise ConfigurationError("the broker control URL needs the control account's user and password")
        self._topics = topics
        self._timeout_s = timeout_s

    def grant_device(self, mqtt_name: str, password: str) -> None:
        """The device's account and its role, replacing any earlier one (whose session is cut)."""
        role = device_role(mqtt_name)
        # One request: the plugin runs its commands in order, each on its own (deleting an account
        # that is not there answers "not found" and the rest still runs). The plugin rewrites its
        # account file after each command that changes something, so the commands are few.
        self._run(
            [
                {"command": "deleteClient", "username": mqtt_name},
                {"command": "deleteRole", "rolename": role},
                {"command": "createRole", "rolename": role, "acls": device_acls(self._topics, mqtt_name)},
                {
                    "command": "createClient",
                    "username": mqtt_name,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
            ]
        )

    def revoke_device(self, mqtt_name: str) -> None:
        """Delete the device's account: the broker disconnects a connected device at once. The
        role goes in a second request, so the cut-off does not wait for a second file rewrite."""
        self._run([{"command": "deleteClient", "username": mqtt_name}])
        self._run([{"command": "deleteRole", "rolename": device_role(mqtt_name)}])

    def _run(self, commands: list[dict[str, Any]]) -> None:
        """Send the commands and wait for the plugin's answer; an error other than deleting what
        is not there raises BrokerUnavailableError."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        done = threading.Event()
        answer: dict[str, Any] = {}
        # Every control client reads the same response topic: ours carry our correlation id.
        correlation = uuid.uuid4().hex
        commands = [{**command, "correlationData": correlation} for command in commands]
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"coldchain-control-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(self._address.username, self._address.password)
        if self._address.tls:
            client.tls_set()

        def on_connect(c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
            if reason.is_failure:
                answer["refused"] = str(reason)
                done.set()
                return
            c.subscribe(f"{CONTROL_TOPIC}/response", qos=1)

        def on_subscribe(c: mqtt.Client, _u: object, _m: object, reasons: Any, _p: object) -> None:
            if any(r.is_failure for r in reasons):
                answer["refused"] = "the control account may not read the plugin's responses"
                done.set()
                return
            c.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)

        def on_message(_c: mqtt.Client, _u: object, message: Any) -> None:
            try:
                responses = json.loads(message.payload).get("responses", [])
            except (ValueError, AttributeError):
                return
            ours = [r for r in responses if isinstance(r, dict) and r.get("correlationData") == correlation]
            if ours:
                answer["responses"] = ours
                done.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        try:
            client.connect(self._address.host, self._address.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnavailableError(f"broker {self._address.display()} is unreachable: {exc}") from None
        client.loop_start()
        try:
            if not done.wait(self._timeout_s):
                raise BrokerUnavailableError(
                    f"broker {self._address.display()} did not answer the account change"
                )
        finally:
            client.disconnect()
            client.loop_stop()
        if "refused" in answer:
            raise BrokerUnavailableError(
                f"broker {self._address.display()} refused the control account: {answer['refused']}"
            )
        for response in answer.get("responses", []):
            error = str(response.get("error", ""))
            deleting = str(response.get("command", "")).startswith("delete")
            if error and not (deleting and "not found" in error.lower()):
                raise BrokerUnavailableError(f"broker refused {response.get('command')}: {error}")
