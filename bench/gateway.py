"""Edge agent benchmark: a day offline (1,440 one-minute readings x 4 sensors), then the flush.

Starts its own Mosquitto, fills the outbox through the agent's own sampling path (write rate),
then runs the real `gateway-agent run` as a subprocess and times the flush to a subscriber that
checks every (device, seq) and every reading time. Prints a final JSON line:

    outbox_write_rps  readings stored per second (WAL, synchronous=FULL, one commit per tick)
    flush_day_s       agent start to the last batch received
    flush_rps         readings per second over that time
    agent_rss_mb      peak resident memory of the agent process (VmHWM)
    lost, duplicated  readings missing / received twice after de-duplication by (device, seq)
    repeats           batches received more than once (harmless; expected 0 here)

Usage: python bench/gateway.py [--sensors 4] [--minutes 1440] [--batch-size 10] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coldchain.wire import Topics, decode_batch
from embedded import MosquittoServer
from gateway_agent.agent import Agent
from gateway_agent.clock import ManualClock
from gateway_agent.config import AgentSettings, DeviceSettings

REPO = Path(__file__).resolve().parents[1]
T0 = 1_795_000_000_000


class RampSource:
    def sample(self, t_ms: int) -> tuple[float, float | None]:
        return 4.0 + ((t_ms // 60_000) % 90) / 30.0, 60.0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--minutes", type=int, default=1440)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="four hours offline instead of a day")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 240

    work = Path(tempfile.mkdtemp(prefix="coldchain-bench-gw-"))
    devices = [f"BENCH-PI-S{i}" for i in range(args.sensors)]
    topics = Topics(prefix="bench/")
    with MosquittoServer() as broker:
        settings = AgentSettings(
            data_dir=work,
            mqtt_url=broker.url,
            topic_prefix=topics.prefix,
            console_alarm=False,
            devices=tuple(
                DeviceSettings(id=d, driver="simulated", batch_size=args.batch_size)
                for d in devices
            ),
        )
        # 1. A day offline: the agent samples every minute and stores (no broker configured).
        offline = dataclasses.replace(settings, mqtt_url=None)
        clock = ManualClock(T0)
        expected: dict[str, list[int]] = {d: [] for d in devices}
        with Agent(offline, clock=clock, sources={d: RampSource() for d in devices}) as agent:
            started = time.perf_counter()
            for _ in range(args.minutes):
                for sample in agent.sample_once():
                    expected[sample.device_id].append(sample.t_ms)
                clock.advance(60)
            write_s = time.perf_counter() - started
            depth = agent.outbox.depth()
        readings = sum(len(v) for v in expected.values())
        assert depth.raw_readings == 0 or args.minutes % args.batch_size

        # 2. The platform side: a subscriber that records every batch.
        seen: list[tuple[str, int, tuple[int, ...]]] = []
        lock = threading.Lock()
        ready = threading.Event()

        def on_message(client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
            batch = decode_batch(bytes(msg.payload))
            with lock:
                seen.append((batch.device, batch.seq, tuple(int(t) for t in batch.t_ms)))

        sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: ready.set()
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        sub.subscribe(topics.all_readings, qos=1)
        ready.wait(10)

        # 3. The network is back: the real agent process drains the outbox.
        config = work / "agent.toml"
        lines = [f'data_dir = "{work}"', f'mqtt_url = "{broker.url}"',
                 f'topic_prefix = "{topics.prefix}"', "console_alarm = false"]
        for d in devices:
            lines += ["[[device]]", f'id = "{d}"', 'driver = "simulated"',
                      f"batch_size = {args.batch_size}"]
        config.write_text("\n".join(lines) + "\n")
        batches_expected = depth.batches
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway_agent.cli", "--config", str(config),
             "--log-level", "WARNING", "run", "--no-sample"],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        flush_s = float("nan")
        rss = float("nan")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with lock:
                    if len(seen) >= batches_expected:
                        flush_s = time.perf_counter() - started
                        break
                time.sleep(0.005)
            time.sleep(0.5)  # anything late (a repeat) would arrive now
            rss = _peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)
            sub.loop_stop()
            sub.disconnect()

        unique: dict[tuple[str, int], tuple[int, ...]] = {}
        for device, seq, times in seen:
            unique.setdefault((device, seq), times)
        got: dict[str, list[int]] = {d: [] for d in devices}
        for (device, _seq), times in sorted(unique.items()):
            got[device].extend(times)
        lost = sum(len(set(expected[d]) - set(got[d])) for d in devices)
        duplicated = sum(len(got[d]) - len(set(got[d])) for d in devices)
        result = {
            "sensors": args.sensors,
            "readings": readings,
            "batches": batches_expected,
            "outbox_write_rps": round(readings / write_s, 1),
            "flush_day_s": round(flush_s, 3),
            "flush_rps": round(readings / flush_s, 1),
            "agent_rss_mb": round(rss, 1),
            "lost": lost,
            "duplicated": duplicated,
            "repeats": len(seen) - len(unique),
        }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0 if lost == 0 and duplicated == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
