"""`coldchain up` as a user runs it: private servers, the demo fleet, alerts in the API, a clean
Ctrl-C that stops every server, and a second start that reuses the data and the admin token."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from embedded.process import free_port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _get(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _start(data_dir: Path, http: int, mqtt: int, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MQTT_URL")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldchain.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http),
            "--mqtt-port",
            str(mqtt),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_healthy(proc: subprocess.Popen[str], http: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if _get(f"http://127.0.0.1:{http}/api/v1/health")["database"] == "ok":
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("coldchain up did not become healthy")


def _interrupt(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _first_demo(http: int, token: str) -> str:
    ids = sorted(d["id"] for d in _get(f"http://127.0.0.1:{http}/api/v1/devices", token))
    return ids[0].removeprefix("DEMO-")


def _pub(mqtt: int, device: str, *login: str) -> int:
    topic = f"coldchain/v1/{device}/status"
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt), "-q", "1", "-t", topic, "-m", "{}", *login]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode


def _outside_client_needs_credentials(data: Path, mqtt: int, device: str) -> None:
    """The broker of `coldchain up` refuses anonymous clients; `coldchain devices provision`
    gives mosquitto_pub a login that works at once, and `revoke` takes it away."""
    assert _pub(mqtt, device) != 0
    cli = [sys.executable, "-m", "coldchain.cli", "devices"]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MQTT_URL")}
    out = subprocess.run(
        [*cli, "provision", device, "--data-dir", str(data), "--json"],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    ).stdout
    login = json.loads(out.strip().splitlines()[-1])
    assert _pub(mqtt, device, "-u", login["username"], "-P", login["password"]) == 0
    assert _pub(mqtt, device, "-u", login["username"], "-P", login["password"] + "x") != 0
    subprocess.run([*cli, "revoke", device, "--data-dir", str(data)], timeout=60, env=env, check=True)
    assert _pub(mqtt, device, "-u", login["username"], "-P", login["password"]) != 0


def test_up_demo_shows_alerts_stops_cleanly_and_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    http, mqtt = free_port(), free_port()
    proc = _start(data, http, mqtt, "--demo", "--time-scale", "600")
    try:
        _wait_healthy(proc, http)
        token = (data / "admin-token").read_text().strip()
        deadline = time.monotonic() + 90
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not alerts:
            alerts = _get(
                f"http://127.0.0.1:{http}/api/v1/alerts?state=open&state=acknowledged&state=resolved", token
            )
            time.sleep(0.5)
        assert alerts, "the demo raised no alert"
        assert all(a["device"].startswith("DEMO-") for a in alerts)
        assert len(_get(f"http://127.0.0.1:{http}/api/v1/devices", token)) == 20
        assert len(_get(f"http://127.0.0.1:{http}/api/v1/shipments", token)) == 5
        _outside_client_needs_credentials(data, mqtt, "DEMO-" + _first_demo(http, token))
    finally:
        out = _interrupt(proc) if proc.poll() is None else ""
    assert token in out  # printed once, on the first start
    assert "stopped." in out
    assert not _listening(http) and not _listening(mqtt)  # API and broker are gone

    proc = _start(data, http, mqtt)
    try:
        _wait_healthy(proc, http)
        again = _get(f"http://127.0.0.1:{http}/api/v1/alerts", token)  # the same token works
        assert {a["id"] for a in alerts} <= {a["id"] for a in again}  # the data is still there
    finally:
        out = _interrupt(proc)
    assert token not in out  # not printed again
