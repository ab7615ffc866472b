"""A fleet of simulated loggers publishing reading batches to a broker from one process.

The fleet keeps a simulated clock: ``sim_ms = start_ms + wall_elapsed * time_scale``. Each
logger's batch falls due when its last reading has been taken on that clock; due batches are
encoded (binary by default, JSON by option) and published with QoS 1 through one paho client
whose in-flight window is bounded (paho keys unacknowledged publishes by a 16-bit id).

Sequence numbers start at 1 per device, grow by one per batch and are never reused within a run.
A restarted fleet continues them from ``seq_start`` (device -> next seq) or from a small JSON
``state_file`` written on stop (and every few seconds), whichever is higher.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coldchain.domain import ReadingBatch, validate_device_name
from coldchain.errors import ConfigurationError, ValidationError
from coldchain.mqtt_url import BrokerAddress
from coldchain.wire import MAX_READINGS, Topics, encode_binary, encode_json
from firmware_sim.scenarios import SimLogger, get_scenario

log = logging.getLogger(__name__)

__all__ = ["Fleet", "LoggerSpec"]


@dataclass(frozen=True)
class LoggerSpec:
    """One simulated logger: its id, scenario preset (or TOML path) and sampling."""

    device_id: str
    scenario: str
    interval_s: int = 60
    batch_size: int = 10
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_device_name(self.device_id)
        if not 1 <= self.interval_s <= 86_400:
            raise ValidationError("interval_s must be between 1 and 86400", field="interval_s")
        if not 1 <= self.batch_size <= MAX_READINGS:
            raise ValidationError("batch_size is out of range", field="batch_size")


@dataclass
class _Device:
    spec: LoggerSpec
    logger: SimLogger
    topic: str
    next_index: int = 0
    next_seq: int = 1
    held: list[tuple[int, bytes]] = field(default_factory=list)


class Fleet:
    """Drives many simulated loggers from background threads; see the module docstring."""

    def __init__(
        self,
        *,
        mqtt_url: str,
        topics: Topics,
        loggers: list[LoggerSpec],
        time_scale: float = 1.0,
        start_ms: int | None = None,
        payload: str = "binary",
        seq_start: dict[str, int] | None = None,
        state_file: Path | None = None,
        max_inflight: int = 1000,
        client_id: str | None = None,
    ) -> None:
        if payload not in ("binary", "json"):
            raise ConfigurationError("payload must be 'binary' or 'json'")
        if not time_scale > 0:
            raise ConfigurationError("time_scale must be positive")
        if not 1 <= max_inflight < 65_535:
            raise ConfigurationError("max_inflight must be between 1 and 65534")
        ids = [spec.device_id for spec in loggers]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("a device id appears twice in the fleet")
        self._address = BrokerAddress.parse(mqtt_url)
        self.topics = topics
        self.time_scale = float(time_scale)
        self.start_ms = int(time.time() * 1000) if start_ms is None else int(start_ms)
        self._encode: Callable[[ReadingBatch], bytes] = (
            encode_binary if payload == "binary" else encode_json
        )
        self.state_file = state_file
        starts = dict(seq_start or {})
        for device, seq in self._load_state().items():
            starts[device] = max(seq, starts.get(device, 1))
        scenarios: dict[str, Any] = {}
        self._devices: list[_Device] = []
        for spec in loggers:
            if spec.scenario not in scenarios:
                scenarios[spec.scenario] = get_scenario(spec.scenario)
            scenario = scenarios[spec.scenario].with_overrides(spec.params)
            logger = SimLogger(
                scenario,
                device_id=spec.device_id,
                interval_s=spec.interval_s,
                seed=spec.seed,
                start_ms=self.start_ms,
            )
            self._devices.append(
                _Device(
                    spec=spec,
                    logger=logger,
                    topic=topics.readings(spec.device_id),
                    next_seq=max(1, starts.get(spec.device_id, 1)),
                )
            )
        self._heap: list[tuple[float, int]] = [
            (self._due_s(d), i) for i, d in enumerate(self._devices)
        ]
        heapq.heapify(self._heap)
        self._window = threading.BoundedSemaphore(max_inflight)
        self._max_inflight = max_inflight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wall0 = 0.0
        self._sim0_s = 0.0
        self._lock = threading.Lock()
        self._acked = 0
        self._rejected = 0
        self.sent = 0
        self.readings_sent = 0
        self.duplicates_sent = 0
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"coldchain-sim-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if self._address.username:
            self._client.username_pw_set(self._address.username, self._address.password)
        if self._address.tls:
            self._client.tls_set()
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._connected = False
        self._link_up = threading.Event()
        self._resync = False

    # ------------------------------------------------------------------ public

    @property
    def published(self) -> int:
        """Publishes the broker acknowledged (PUBACK success), duplicate sends included."""
        return self._acked

    @property
    def rejected(self) -> int:
        """Publishes the broker refused (PUBACK with a failure reason code)."""
        return self._rejected

    @property
    def next_seq(self) -> dict[str, int]:
        """The next sequence number of every device (pass as `seq_start` to continue)."""
        return {d.spec.device_id: d.next_seq for d in self._devices}

    @property
    def sim_ms(self) -> int:
        return self.start_ms + int(self._sim_now_s() * 1000)

    def start(self) -> Fleet:
        """Connect and start publishing in the background; returns at once."""
        if self._thread is not None:
            return self
        self._connect()
        self._wall0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="coldchain-fleet", daemon=True)
        self._thread.start()
        return self

    def run_for(self, simulated_s: float, *, drain_timeout: float = 60.0) -> int:
        """Publish everything due in the next `simulated_s` seconds as fast as the broker takes
        it (no pacing), wait for the acknowledgements, and return how many batches were sent."""
        if self._thread is not None:
            raise ConfigurationError("run_for() cannot be used while the fleet runs in the background")
        self._connect()
        before = self.sent
        self._sim0_s += simulated_s
        self._emit_due(self._sim0_s)
        self.drain(timeout=drain_timeout)
        self._save_state()
        return self.sent - before

    def drain(self, *, timeout: float = 30.0) -> bool:
        """Wait until every publish so far is acknowledged (or refused)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._acked + self._rejected >= self.sent:
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Stop publishing, wait briefly for outstanding acknowledgements, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._connected:
            self.drain(timeout=10.0)
            self._client.disconnect()
            self._client.loop_stop()
            self._connected = False
        self._save_state()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _connect(self) -> None:
        if self._connected:
            return
        self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()
        self._connected = True

    def _sim_now_s(self) -> float:
        if self._thread is None:
            return self._sim0_s
        return self._sim0_s + (time.monotonic() - self._wall0) * self.time_scale

    @staticmethod
    def _due_s(device: _Device) -> float:
        last = device.next_index + device.spec.batch_size - 1
        return float(last * device.spec.interval_s)

    def _run(self) -> None:
        last_save = time.monotonic()
        try:
            while not self._stop.is_set():
                now_s = self._sim_now_s()
                self._emit_due(now_s)
                if self.state_file is not None and time.monotonic() - last_save > 5:
                    self._save_state()
                    last_save = time.monotonic()
                wait = 0.2
                if self._heap:
                    wait = min(wait, max(0.0, (self._heap[0][0] - now_s) / self.time_scale))
                self._stop.wait(wait)
        except Exception:
            log.exception("simulated fleet stopped on an error")

    def _emit_due(self, until_s: float) -> None:
        while self._heap and self._heap[0][0] <= until_s and not self._stop.is_set():
            due_s, i = heapq.heappop(self._heap)
            device = self._devices[i]
            self._emit_batch(device, due_s)
            heapq.heappush(self._heap, (self._due_s(device), i))

    def _emit_batch(self, device: _Device, due_s: float) -> None:
        spec = device.spec
        stretch = device.logger.readings(device.next_index, device.next_index + spec.batch_size)
        device.next_index += spec.batch_size
        logger = device.logger
        if len(stretch):
            seq = device.next_seq
            device.next_seq += 1
            batch = ReadingBatch(
                device=spec.device_id,
                seq=seq,
                sent_ms=int(logger.device_ms(due_s)),
                t_ms=stretch.t_ms,
                celsius=stretch.celsius,
                rh=stretch.rh,
                extras=stretch.extras,
            )
            device.held.append((seq, self._encode(batch)))
            self.readings_sent += len(stretch)
        if logger.network_down(due_s):
            return
        for seq, payload in device.held:
            self._publish(device.topic, payload)
            if logger.duplicate(seq):
                self.duplicates_sent += 1
                self._publish(device.topic, payload)
        device.held.clear()

    def _publish(self, topic: str, payload: bytes) -> None:
        if not self._wait_for_link():
            return
        while not self._window.acquire(timeout=0.5):
            if self._stop.is_set() and self._thread is not None:
                return
        self.sent += 1
        self._client.publish(topic, payload, qos=1)

    def _wait_for_link(self) -> bool:
        """Publish only on a live link, and after a reconnect only once paho's resends of the
        unacknowledged publishes are through: otherwise new batches could overtake old ones."""
        while not self._link_up.wait(0.5):
            if self._stop.is_set() and self._thread is not None:
                return False
        if self._resync:
            while self._acked + self._rejected < self.sent:
                if (self._stop.is_set() and self._thread is not None) or not self._link_up.wait(0):
                    return self._wait_for_link() if not self._stop.is_set() else False
                time.sleep(0.01)
            self._resync = False
        return True

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if not getattr(reason_code, "is_failure", False):
            self._link_up.set()
        else:
            log.warning("broker refused the simulated fleet: %s", reason_code)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._link_up.clear()
        self._resync = True

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        failed = bool(getattr(reason_code, "is_failure", False))
        with self._lock:
            if failed:
                self._rejected += 1
            else:
                self._acked += 1
        if failed and self._rejected == 1:
            log.warning("broker refused a simulated batch: %s", reason_code)
        # More acknowledgements than publishes can happen with a resend after a reconnect.
        with contextlib.suppress(ValueError):
            self._window.release()

    def _load_state(self) -> dict[str, int]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        doc = json.loads(self.state_file.read_text())
        return {str(k): int(v) for k, v in doc.get("next_seq", {}).items()}

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_seq": self.next_seq}, sort_keys=True))
        os.replace(tmp, self.state_file)


def progress_line(fleet: Fleet, started: float, total: int | None = None) -> str:
    """A one-line progress report for the command line."""
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = fleet.published / elapsed
    bar = ""
    if total:
        done = min(1.0, fleet.published / total)
        filled = int(done * 30)
        bar = "[" + "#" * filled + "." * (30 - filled) + f"] {done:6.1%} "
    return (
        f"{bar}{fleet.published} batches acked, {fleet.readings_sent} readings, "
        f"{rate:,.0f} batches/s, sim {(fleet.sim_ms - fleet.start_ms) / 3.6e6:.1f} h"
    )
