"""The agent over TLS with a client certificate, against a real Mosquitto that requires one and
takes the certificate's common name as the username its ACL pins to that device's topics."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coldchain.wire import Topics, decode_batch
from embedded import MosquittoServer
from gateway_agent.agent import Agent
from gateway_agent.clock import ManualClock
from gateway_agent.config import AgentSettings, DeviceSettings

T0 = 1_795_515_240_000


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder: Path, name: str, *, server: bool = False) -> None:
    """A key and a certificate for `name`, signed by the test CA in `folder`."""
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-subj",
        f"/CN={name}",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    ext = folder / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.crt",
        "-extfile",
        ext.name,
        cwd=folder,
    )


@pytest.fixture
def tls_broker() -> Iterator[tuple[MosquittoServer, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    folder = Path(tempfile.mkdtemp(prefix="coldchain-tls-"))
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-subj",
        "/CN=coldchain test CA",
        "-days",
        "2",
        "-out",
        "ca.crt",
        cwd=folder,
    )
    for name in ("broker", "TLS-1", "platform"):
        _issue(folder, name, server=name == "broker")
    acl = folder / "acl"
    acl.write_text(
        "user platform\ntopic read coldchain/v1/#\n\npattern write coldchain/v1/%u/readings\n"
        "pattern write coldchain/v1/%u/status\npattern read coldchain/v1/%u/config\n"
    )
    server = MosquittoServer(
        folder, acl_file=acl, tls=(folder / "ca.crt", folder / "broker.crt", folder / "broker.key")
    )
    server.start()
    yield server, folder
    server.destroy()
    shutil.rmtree(folder, ignore_errors=True)


def _client(port: int, folder: Path, name: str | None) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(
        ca_certs=str(folder / "ca.crt"),
        certfile=str(folder / f"{name}.crt") if name else None,
        keyfile=str(folder / f"{name}.key") if name else None,
    )
    return client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_agent_publishes_over_tls_with_its_certificate(
    tmp_path: Path, tls_broker: tuple[MosquittoServer, Path]
) -> None:
    broker, folder = tls_broker
    topics = Topics()
    received: list[bytes] = []
    sub = _client(broker.port, folder, "platform")
    sub.on_message = lambda c, u, m: received.append(m.payload)
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    sub.subscribe(topics.all_readings, qos=1)
    settings = AgentSettings(
        data_dir=tmp_path / "agent",
        mqtt_url=f"mqtts://127.0.0.1:{broker.port}",
        ca_file=folder / "ca.crt",
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        connect_timeout_s=2.0,
        console_alarm=False,
        devices=(
            DeviceSettings(
                id="TLS-1", driver="simulated", cert_file=folder / "TLS-1.crt", key_file=folder / "TLS-1.key"
            ),
        ),
    )
    clock = ManualClock(T0)
    agent = Agent(settings, clock=clock)
    runner = asyncio.create_task(agent.run(sample=False))
    try:
        for _ in range(30):  # a half-hour of readings: three batches of the default size
            agent.sample_once()
            clock.advance(60)
        for _ in range(200):
            if len(received) >= 3:
                break
            await asyncio.sleep(0.05)
        batches = [decode_batch(p) for p in received]
        assert [b.device for b in batches] == ["TLS-1"] * len(batches)
        assert [b.seq for b in batches][:3] == [1, 2, 3]
    finally:
        agent.stop()
        await asyncio.wait_for(runner, 10)
        agent.close()
        sub.loop_stop()
        sub.disconnect()


def _connects(port: int, folder: Path, name: str | None) -> bool:
    """Whether the broker answers this client's CONNECT with a CONNACK within a few seconds."""
    client = _client(port, folder, name)
    acked: list[object] = []
    client.on_connect = lambda *args: acked.append(args)
    try:
        client.connect("127.0.0.1", port)
        for _ in range(20):
            client.loop(timeout=0.1)
            if acked:
                break
    except (ssl.SSLError, OSError):
        pass  # the handshake itself was refused
    finally:
        client.disconnect()
    return bool(acked)


def test_a_client_without_a_certificate_is_refused(tls_broker: tuple[MosquittoServer, Path]) -> None:
    broker, folder = tls_broker
    assert _connects(broker.port, folder, "platform")  # the control: a certificate gets in
    assert not _connects(broker.port, folder, None)
