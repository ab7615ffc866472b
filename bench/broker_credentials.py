"""How soon a new or revoked device credential takes effect on Mosquitto, for the two ways a
running broker can learn accounts without a restart:

- `dynsec`: the dynamic-security plugin, changed over its `$CONTROL` topic (what coldchain uses);
- `passwd`: a password file and ACL file rewritten, then SIGHUP (the broker rereads both).

Starts one broker per way with `--devices` accounts already present, then `--rounds` times:
grant a new device and time until its first login succeeds; connect it, revoke it and time until
the broker has closed the live session (and check a new login is refused). Prints a final JSON line:

    <way>_grant_ms_p50 / _max     change started -> the new password logs in
    <way>_revoke_ms_p50 / _max    change started -> the connected session is closed
    <way>_revoked_cut_off         every revoked session was closed and every re-login refused

Usage: python bench/broker_credentials.py [--devices 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coldchain import broker_accounts
from coldchain.wire import Topics
from embedded import MosquittoServer

TOPICS = Topics("")


class Session:
    def __init__(self, port: int, username: str, password: str) -> None:
        self.answer: Any = None
        self.closed = threading.Event()
        self._answered = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"b-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(60, 60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: (self.closed.set(), self._answered.set())
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self._answered.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.answer = reason
        self._answered.set()

    @property
    def accepted(self) -> bool:
        return self.answer is not None and not self.answer.is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _until_login(port: int, username: str, password: str, started: float) -> float:
    while True:
        session = Session(port, username, password)
        ok = session.accepted
        session.close()
        if ok:
            return (time.perf_counter() - started) * 1000
        if time.perf_counter() - started > 30:
            raise SystemExit(f"{username} never got in")


def _round(
    port: int, device: str, grant: Callable[[str, str], None], revoke: Callable[[str], None]
) -> tuple[float, float, bool]:
    password = broker_accounts.new_secret()
    started = time.perf_counter()
    grant(device, password)
    grant_ms = _until_login(port, device, password, started)
    live = Session(port, device, password)
    assert live.accepted
    started = time.perf_counter()
    revoke(device)
    cut = live.closed.wait(30)
    revoke_ms = (time.perf_counter() - started) * 1000
    live.close()
    again = Session(port, device, password)
    refused = not again.accepted
    again.close()
    return grant_ms, revoke_ms, cut and refused


def _dynsec(devices: int, rounds: int) -> list[tuple[float, float, bool]]:
    control_pw = broker_accounts.new_secret()
    existing = [
        (f"OLD-{i}", broker_accounts.hash_password(broker_accounts.new_secret())) for i in range(devices)
    ]
    doc = broker_accounts.dynsec_document(
        TOPICS,
        services={broker_accounts.CONTROL: broker_accounts.hash_password(control_pw)},
        devices=existing,
    )
    with MosquittoServer(accounts=doc) as server:
        control = broker_accounts.BrokerControl(
            f"mqtt://{broker_accounts.CONTROL}:{control_pw}@127.0.0.1:{server.port}", TOPICS
        )
        return [
            _round(server.port, f"NEW-{i}", control.grant_device, control.revoke_device)
            for i in range(rounds)
        ]


def _passwd(devices: int, rounds: int) -> list[tuple[float, float, bool]]:
    folder = Path(tempfile.mkdtemp(prefix="coldchain-passwd-"))
    passwd, acl = folder / "passwd", folder / "acl"
    lines = {f"OLD-{i}": broker_accounts.hash_password(broker_accounts.new_secret()) for i in range(devices)}
    acl.write_text(f"pattern write {TOPICS.root}/%u/readings\npattern write {TOPICS.root}/%u/status\n")

    def write() -> None:
        tmp = passwd.with_suffix(".tmp")
        tmp.write_text("".join(f"{user}:{hashed}\n" for user, hashed in lines.items()))
        os.chmod(tmp, 0o644)
        tmp.replace(passwd)

    write()
    with MosquittoServer(folder / "broker", password_file=passwd, acl_file=acl) as server:
        pid = server.pid
        assert pid is not None

        def grant(device: str, password: str) -> None:
            lines[device] = broker_accounts.hash_password(password)
            write()
            os.kill(pid, signal.SIGHUP)

        def revoke(device: str) -> None:
            lines.pop(device, None)
            write()
            os.kill(pid, signal.SIGHUP)

        return [_round(server.port, f"NEW-{i}", grant, revoke) for i in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2000, help="accounts present before the changes")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    out: dict[str, Any] = {"devices": args.devices, "rounds": args.rounds}
    for way, run in (("dynsec", _dynsec), ("passwd", _passwd)):
        results = run(args.devices, args.rounds)
        grants = [g for g, _, _ in results]
        revokes = [r for _, r, _ in results]
        out[f"{way}_grant_ms_p50"] = round(statistics.median(grants), 1)
        out[f"{way}_grant_ms_max"] = round(max(grants), 1)
        out[f"{way}_revoke_ms_p50"] = round(statistics.median(revokes), 1)
        out[f"{way}_revoke_ms_max"] = round(max(revokes), 1)
        out[f"{way}_revoked_cut_off"] = all(ok for _, _, ok in results)
        print(f"{way}: {json.dumps({k: v for k, v in out.items() if k.startswith(way)})}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
