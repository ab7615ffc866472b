"""The agent's own configuration: a TOML file the installer writes (see docs/edge.md).

Example::

    data_dir = "/var/lib/coldchain-gateway"
    mqtt_url = "mqtts://broker.example.com:8883"
    ca_file = "/etc/coldchain-gateway/ca.pem"
    payload = "binary"          # or "json"

    [[device]]
    id = "TRK-0042-L1"
    driver = "ds18b20"
    sensor = "28-000005e2fdc3"
    username = "TRK-0042-L1"
    password_file = "/etc/coldchain-gateway/TRK-0042-L1.secret"
    profile = "2-8C"            # local alarm until the platform sends its own
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldchain.domain import validate_device_name
from coldchain.errors import ConfigurationError, ValidationError
from coldchain.mqtt_url import BrokerAddress

DRIVERS = ("simulated", "serial", "ds18b20", "sht3x", "sht4x", "bme280")

_DEVICE_KEYS = {
    "id", "driver", "username", "password", "password_file", "cert_file", "key_file",
    "profile", "seq_floor", "interval_s", "batch_size", "batch_age_s",
    # driver options
    "celsius", "rh", "port", "baudrate", "format", "columns", "delimiter", "talker",
    "sensor", "w1_root", "bus", "address",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSettings:
    """One logger the gateway serves: its driver, its credentials, its local defaults. `id` is
    the logger's MQTT name: its device id, or `organization~id` outside the default organization."""

    id: str
    driver: str
    options: Mapping[str, Any] = field(default_factory=dict)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    profile: Mapping[str, Any] | str | None = None
    seq_floor: int = 1
    interval_s: int = 60
    batch_size: int = 10
    batch_age_s: int = 600

    def __post_init__(self) -> None:
        try:
            validate_device_name(self.id)
        except ValidationError as exc:
            raise ConfigurationError(str(exc)) from None
        if self.driver not in DRIVERS:
            raise ConfigurationError(f"device {self.id}: driver must be one of {DRIVERS}")
        if self.password and self.password_file:
            raise ConfigurationError(f"device {self.id}: give password or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigurationError(f"device {self.id}: cert_file and key_file go together")
        if self.seq_floor < 0:
            raise ConfigurationError(f"device {self.id}: seq_floor must be >= 0")

    def secret(self) -> str | None:
        """The MQTT password, read from its file when given as one (never logged)."""
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    data_dir: Path = Path("/var/lib/coldchain-gateway")
    mqtt_url: str | None = None
    topic_prefix: str = ""
    ca_file: Path | None = None
    payload: str = "binary"
    fw: str = "gateway-agent"
    max_readings: int = 1_000_000
    summary_bucket_s: int = 900
    max_inflight: int = 32
    heartbeat_s: float = 300.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 300.0
    connect_timeout_s: float = 10.0
    battery_file: Path | None = None
    signal_file: Path | None = None
    status_port: int = 0
    console_alarm: bool = True
    gpio_buzzer: int | None = None
    gpio_led: int | None = None
    gpio_root: Path = Path("/sys/class/gpio")
    devices: tuple[DeviceSettings, ...] = ()

    def __post_init__(self) -> None:
        if self.payload not in ("binary", "json"):
            raise ConfigurationError("payload must be 'binary' or 'json'")
        if self.mqtt_url is not None:
            BrokerAddress.parse(self.mqtt_url)
        if not 1 <= self.max_inflight < 65_535:
            raise ConfigurationError("max_inflight must be between 1 and 65534")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigurationError("need 0 < reconnect_min_s <= reconnect_max_s")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("a device id appears twice")

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite3"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.json"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AgentSettings:
        doc = dict(doc)
        raw_devices = doc.pop("device", [])
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(f"unknown settings {sorted(unknown)}")
        devices = []
        for item in raw_devices:
            unknown = set(item) - _DEVICE_KEYS
            if unknown:
                raise ConfigurationError(f"unknown device settings {sorted(unknown)}")
            named = {k: item[k] for k in item if k in DeviceSettings.__dataclass_fields__}
            for key in ("password_file", "cert_file", "key_file"):
                if named.get(key):
                    named[key] = Path(named[key])
            options = {k: v for k, v in item.items() if k not in DeviceSettings.__dataclass_fields__}
            devices.append(DeviceSettings(options=options, **named))
        for key in ("data_dir", "ca_file", "battery_file", "signal_file", "gpio_root"):
            if doc.get(key):
                doc[key] = Path(doc[key])
        try:
            return cls(devices=tuple(devices), **doc)
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from None

    @classmethod
    def load(cls, path: Path) -> AgentSettings:
        try:
            with path.open("rb") as fh:
                return cls.from_dict(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read {path}: {exc}") from None
