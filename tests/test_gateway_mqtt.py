"""The edge agent against a real Mosquitto: a day offline, kill -9 mid-flush, ACL denial, config,
status and last will."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coldchain.domain import ReadingBatch
from coldchain.wire import DeviceConfig, DeviceStatus, Topics, decode_batch, encode_binary
from embedded import MosquittoServer
from gateway_agent.agent import Agent
from gateway_agent.clock import ManualClock
from gateway_agent.config import AgentSettings, DeviceSettings
from gateway_agent.drivers.base import Sample
from gateway_agent.errors import PublishRefusedError
from gateway_agent.outbox import Outbox
from gateway_agent.publisher import AckingClient

T0 = 1_795_000_000_000
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


class Gate:
    """A TCP relay in front of the broker that the test can cut: a network loss, not a dead broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.is_open = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.is_open:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._pairs.append((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def open(self) -> None:
        self.is_open = True

    def cut(self) -> None:
        self.is_open = False
        with self._lock:
            for a, b in self._pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._listener.close()
        for t in self._threads:
            t.join(timeout=2)
        with self._lock:
            for a, b in self._pairs:
                a.close()
                b.close()


class Subscriber:
    """A platform-side test client recording every batch (device, seq, times) in arrival order."""

    def __init__(self, port: int, topic: str, *, username: str | None = None,
                 password: str | None = None, retained_topic: str | None = None) -> None:
        self.batches: list[tuple[str, int, tuple[int, ...], tuple[float, ...]]] = []
        self.topics_seen: list[str] = []
        self.retained: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        subs = [(topic, 1)] + ([(retained_topic, 1)] if retained_topic else [])
        self.client.subscribe(subs)
        assert self._ready.wait(10)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.topics_seen.append(msg.topic)
            if msg.topic.endswith("/readings"):
                b = decode_batch(msg.payload)
                self.batches.append(
                    (b.device, b.seq, tuple(int(t) for t in b.t_ms),
                     tuple(float(c) for c in b.celsius))
                )
            else:
                self.retained[msg.topic] = msg.payload

    def count(self) -> int:
        with self._lock:
            return len(self.batches)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.count() >= n, f"only {self.count()} of {n} batches arrived"

    def wait_quiet(self, quiet_s: float = 0.5, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.count() != last:
                last, since = self.count(), time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RampSource:
    """A load whose temperature encodes the reading time, so a reading can be traced."""

    def sample(self, t_ms: int) -> tuple[float, float | None]:
        return 4.0 + ((t_ms // 60_000) % 100) / 50.0, 55.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gate(mqtt_server: MosquittoServer) -> Iterator[Gate]:
    g = Gate(mqtt_server.port)
    yield g
    g.close()


def _settings(tmp_path: Path, port: int, topics: Topics, devices: list[str], **kw: object) -> AgentSettings:
    return AgentSettings(
        data_dir=tmp_path,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        topic_prefix=topics.prefix,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        connect_timeout_s=1.0,
        console_alarm=False,
        devices=tuple(DeviceSettings(id=d, driver="simulated") for d in devices),
        **kw,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- a day offline


@pytest.mark.anyio
async def test_a_day_offline_then_every_reading_arrives_once_in_order(
    tmp_path: Path, gate: Gate, mqtt_server: MosquittoServer, topics: Topics
) -> None:
    devices = ["TRK-0042-L1", "TRK-0042-L2"]
    settings = _settings(tmp_path, gate.port, topics, devices)
    clock = ManualClock(T0)
    sub = Subscriber(mqtt_server.port, topics.all_readings)
    agent = Agent(settings, clock=clock, sources={d: RampSource() for d in devices})
    runner = asyncio.create_task(agent.run(sample=False))
    try:
        expected_t = []
        for minute in range(24 * 60):  # a simulated day of 1-minute readings, no network
            expected_t.append(clock.now_ms())
            agent.sample_once()
            clock.advance(60)
            if minute % 120 == 0:
                await asyncio.sleep(0.05)  # let the publishers try (and fail) to connect
        assert all(not p.link.connected for p in agent.publishers.values())
        for d in devices:
            assert agent.outbox.depth(d).batches == 144
        assert sub.count() == 0
        gate.open()
        await asyncio.to_thread(sub.wait_for, 288)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(sub.wait_quiet)
        for d in devices:
            mine = [b for b in sub.batches if b[0] == d]
            assert [b[1] for b in mine] == list(range(1, 145))  # once each, in order of seq
            times = [t for b in mine for t in b[2]]
            assert times == expected_t  # every reading once, in order
        for _ in range(400):  # acknowledgements are recorded in groups; wait for the last one
            if all(agent.outbox.depth(d).batches == 0 for d in devices):
                break
            await asyncio.sleep(0.05)
        assert all(agent.outbox.depth(d).readings == 0 for d in devices)
    finally:
        agent.stop()
        await asyncio.wait_for(runner, 10)
        agent.close()
        sub.close()


# --------------------------------------------------------------------------- kill -9


def _agent_process(config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(config.with_suffix(".log"), "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway_agent.cli", "--config", str(config), "--log-level",
             "WARNING", "run", "--no-sample"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
        )


def test_kill_9_mid_flush_resends_exactly_the_unacked_batches(
    tmp_path: Path, mqtt_server: MosquittoServer, topics: Topics
) -> None:
    devices = [f"PI-7-S{i}" for i in range(4)]
    outbox_path = tmp_path / "outbox.sqlite3"
    expected: dict[str, list[int]] = {}
    with Outbox(outbox_path) as outbox:  # a day of 1-minute readings from 4 sensors, unsent
        for d in devices:
            samples = [Sample(d, T0 + m * 60_000, 4.0 + (m % 50) / 25.0) for m in range(1440)]
            outbox.add(samples)
            outbox.seal(d, batch_size=2, max_age_s=86_400, now_ms=T0)
            expected[d] = [s.t_ms for s in samples]
    total = 4 * 720
    config = tmp_path / "agent.toml"
    lines = [
        f'data_dir = "{tmp_path}"',
        f'mqtt_url = "mqtt://127.0.0.1:{mqtt_server.port}"',
        f'topic_prefix = "{topics.prefix}"',
        "max_inflight = 16",
        "reconnect_min_s = 0.05",
        "reconnect_max_s = 0.2",
        "console_alarm = false",
    ]
    for d in devices:
        lines += ["[[device]]", f'id = "{d}"', 'driver = "simulated"']
    config.write_text("\n".join(lines) + "\n")
    sub = Subscriber(mqtt_server.port, topics.all_readings, retained_topic=f"{topics.root}/+/status")
    first = _agent_process(config)
    second: subprocess.Popen[bytes] | None = None
    try:
        sub.wait_for(total // 5, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        sub.wait_quiet()
        before = list(sub.batches)
        assert len(before) < total, "the flush finished before the kill; nothing was tested"
        with Outbox(outbox_path, read_only=True) as outbox:
            unacked = {(d, b.seq) for d in devices for b in outbox.pending(d, limit=total)}
        # The last will: the broker marks the killed agent offline.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = sub.retained.get(topics.status(devices[0]))
            if status and DeviceStatus.decode(status).state == "offline":
                break
            time.sleep(0.05)
        assert DeviceStatus.decode(sub.retained[topics.status(devices[0])]).state == "offline"

        second = _agent_process(config)
        try:
            sub.wait_for(len(before) + len(unacked), timeout=60)
            sub.wait_quiet()
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
        after = sub.batches[len(before):]
        # The restart sent exactly the batches without a recorded PUBACK, each once, in order.
        assert sorted((d, s) for d, s, _, _ in after) == sorted(unacked)
        assert len(after) == len(unacked)
        for d in devices:
            seqs = [s for dev, s, _, _ in after if dev == d]
            assert seqs == sorted(seqs)
        # Repeats (PUBACK seen, not yet recorded at the kill) carry identical readings ...
        by_key: dict[tuple[str, int], tuple[tuple[int, ...], tuple[float, ...]]] = {}
        for d, s, t, c in sub.batches:
            assert by_key.setdefault((d, s), (t, c)) == (t, c)
        repeats = len(sub.batches) - len(by_key)
        # At most, per device (one publisher each): its in-flight window plus unrecorded acks.
        assert repeats <= len(devices) * (16 + 64)
        # ... so after de-duplication by (device, seq): no loss, no duplicate reading.
        assert len(by_key) == total
        for d in devices:
            times = [t for (dev, s), (ts, _) in sorted(by_key.items()) if dev == d for t in ts]
            assert times == expected[d]
        # A clean stop publishes the offline status itself.
        assert DeviceStatus.decode(sub.retained[topics.status(devices[0])]).state == "offline"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        sub.close()


# --------------------------------------------------------------------------- ACLs


@pytest.fixture
def acl_broker() -> Iterator[MosquittoServer]:
    folder = Path(tempfile.mkdtemp(prefix="coldchain-acl-"))
    passwd, acl = folder / "passwd", folder / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "DEV-A", "secret-a"], check=True)
    for user, pw in (("DEV-B", "secret-b"), ("platform", "secret-p")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True)
    acl.write_text(
        "user platform\ntopic read coldchain/v1/#\n\n"
        "pattern write coldchain/v1/%u/readings\n"
        "pattern write coldchain/v1/%u/status\n"
        "pattern read coldchain/v1/%u/config\n"
    )
    server = MosquittoServer(folder, password_file=passwd, acl_file=acl)
    server.start()
    yield server
    server.destroy()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.anyio
async def test_a_device_cannot_publish_under_another_devices_id(acl_broker: MosquittoServer) -> None:
    topics = Topics()
    sub = Subscriber(acl_broker.port, topics.all_readings, username="platform", password="secret-p")
    try:
        async with AckingClient(
            "127.0.0.1", acl_broker.port, username="DEV-A", password="secret-a",
            identifier="gw-DEV-A", protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:

            def batch(device: str) -> bytes:
                return encode_binary(ReadingBatch(
                    device=device, seq=1, sent_ms=T0, t_ms=np.array([T0]),
                    celsius=np.array([5.0]), rh=np.array([np.nan]),
                ))

            with pytest.raises(PublishRefusedError) as refused:
                await client.publish_acked(topics.readings("DEV-B"), batch("DEV-B"))
            assert refused.value.reason_code == 0x87  # Not authorized
            await client.publish_acked(topics.readings("DEV-A"), batch("DEV-A"))
        await asyncio.to_thread(sub.wait_for, 1, 10)
        await asyncio.sleep(0.3)
        assert [b[0] for b in sub.batches] == ["DEV-A"]
        assert all("DEV-B" not in t for t in sub.topics_seen)
    finally:
        sub.close()


# --------------------------------------------------------------------------- config, status, CLI


@pytest.mark.anyio
async def test_retained_config_is_applied_and_reported(
    tmp_path: Path, mqtt_server: MosquittoServer, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    device = "TRK-9-L1"
    config = DeviceConfig(
        version=7, interval_s=60, batch_size=3,
        profile={"id": "2-8C", "limits": [{"id": "H1", "side": "high", "threshold_c": 8.0,
                                           "single_event_delay_s": 120, "tier": "alarm"}]},
    )
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mqtt_server.port)
    pub.loop_start()
    pub.publish(topics.config(device), config.encode(), qos=1, retain=True).wait_for_publish(5)
    pub.publish(topics.config("OTHER"), b"{not json", qos=1, retain=True).wait_for_publish(5)
    sub = Subscriber(mqtt_server.port, topics.all_readings, retained_topic=topics.status(device))
    settings = AgentSettings(
        data_dir=tmp_path, mqtt_url=mqtt_server.url, topic_prefix=topics.prefix,
        console_alarm=False, reconnect_min_s=0.05, reconnect_max_s=0.2,
        devices=(DeviceSettings(id=device, driver="simulated", options={"celsius": 9.5}),),
    )
    clock = ManualClock(T0)
    agent = Agent(settings, clock=clock)
    runner = asyncio.create_task(agent.run(sample=False))
    try:
        for _ in range(200):
            status = sub.retained.get(topics.status(device))
            if status and DeviceStatus.decode(status).applied_config == 7:
                break
            await asyncio.sleep(0.05)
        assert DeviceStatus.decode(sub.retained[topics.status(device)]).applied_config == 7
        assert agent.configs[device].batch_size == 3
        for _ in range(4):  # 9.5 °C for 3 minutes: H1 (2 min delay) raises locally
            agent.sample_once()
            clock.advance(60)
        assert agent.alarm.active(device) == ["H1"]
        await asyncio.to_thread(sub.wait_for, 1, 10)
        agent.write_state()
    finally:
        agent.stop()
        await asyncio.wait_for(runner, 10)
        agent.close()
        sub.close()
        pub.loop_stop()
        pub.disconnect()
    (tmp_path / "agent.toml").write_text(
        f'data_dir = "{tmp_path}"\n[[device]]\nid = "{device}"\ndriver = "simulated"\n'
    )
    from gateway_agent.cli import main

    assert main(["--config", str(tmp_path / "agent.toml"), "status"]) == 0
    out = capsys.readouterr().out
    assert "ALARM" in out and "H1" in out and "9.50 °C" in out and "config v7" in out
    assert "queue 1 readings" in out  # 4 readings, one batch of 3 sent, one raw left


def test_a_socket_closed_under_aiomqtt_is_a_warning_and_anything_else_goes_on() -> None:
    """The agent's loop handler lets aiomqtt's EBADF race through with a warning and hands every
    other error to the handler that was there before."""
    import errno as errno_

    from gateway_agent.agent import socket_race_handler

    seen: list[dict[str, object]] = []
    loop = asyncio.new_event_loop()
    try:
        handle = socket_race_handler(lambda _loop, context: seen.append(context))

        class _AiomqttHandle:
            def __repr__(self) -> str:
                return "<Handle Client._on_socket_register_write.<locals>.callback() at aiomqtt/client.py>"

        race = {"exception": OSError(errno_.EBADF, "Bad file descriptor"), "handle": _AiomqttHandle()}
        handle(loop, race)
        assert seen == []
        other = {"exception": OSError(errno_.EBADF, "Bad file descriptor"), "handle": "<Handle mine()>"}
        handle(loop, other)
        broken = {"exception": ValueError("a real bug"), "handle": _AiomqttHandle()}
        handle(loop, broken)
        assert seen == [other, broken]
    finally:
        loop.close()
