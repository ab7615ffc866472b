"""Ingest benchmark: raw binary COPY (the database's limit) against the real ingest path and a
naive per-message INSERT + commit ingestor, on private PostgreSQL and Mosquitto servers it starts.

    python bench/ingest.py [--quick] [--engine both|timescale|plain]

Runs on TimescaleDB and on plain PostgreSQL, one after the other on one private cluster, when
TimescaleDB is installed (plain only otherwise); every figure is reported per engine, and the
top-level figures are those of the first engine (TimescaleDB where present).
The same rows go into the same schema (same indexes) in every measurement of an engine. Pipeline figures are
taken on the ingest side, from its first received message to its last commit (read from its
Prometheus metrics): the broker is loaded first, through the real ingest session, by several
publisher processes (a paho publisher tops out near 5k messages/s), so the figure is what ingest
sustains, not what one publisher can send. The final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

from coldchain.domain import ReadingBatch  # noqa: E402
from coldchain.wire import Topics, encode_binary  # noqa: E402
from embedded import MosquittoServer, PostgresServer, free_port  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from storage.readings import ReadingRows, copy_rows  # noqa: E402

DEVICES = 100
SHIPMENTS = 10
STEP_MS = 1000


class BenchBroker(MosquittoServer):
    """The private broker with the in-flight window of deploy/mosquitto/mosquitto.conf: with
    manual acks, ingest can only receive the next group while one is being written if the broker
    lets more than a group's worth of messages be unacknowledged."""

    def _write_config(self) -> Path:
        conf = super()._write_config()
        lines = [
            "max_inflight_messages 10000" if line.startswith("max_inflight_messages ") else line
            for line in conf.read_text().splitlines()
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf


# --------------------------------------------------------------------------- the rows


def device_id(i: int) -> str:
    return f"BENCH-{i:04d}"


def make_batch(dev: int, seq: int, per_message: int, base_ms: int) -> ReadingBatch:
    """Deterministic batch `seq` of device `dev` (every process builds the same bytes)."""
    rng = np.random.default_rng(dev * 1_000_003 + seq)
    t = base_ms + (seq * per_message + np.arange(per_message, dtype=np.int64)) * STEP_MS
    return ReadingBatch(
        device=device_id(dev), seq=seq, sent_ms=int(t[-1]) + 500, t_ms=t,
        celsius=np.round(4.0 + rng.normal(0, 0.5, per_message), 2),
        rh=np.round(55.0 + rng.normal(0, 2, per_message), 1),
    )


ENGINE = "plain"  # the engine the databases of the current measurement are migrated on


def setup_db(server: PostgresServer, name: str) -> tuple[str, dict[str, int], dict[int, int]]:
    """A migrated database with the bench devices, each on one of the shipments since long ago."""
    name = f"{name}_{ENGINE}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn_for(name)
    migrate(dsn, engine="timescale" if ENGINE == "timescale" else "plain")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in range(SHIPMENTS):
            conn.execute(
                "INSERT INTO shipments (org_id, id, profile_id, profile_version)"
                " VALUES (1, %s, '2-8C', 1)", (f"SO-{s}",),
            )
        conn.execute(
            "INSERT INTO devices (id, org_id, kind, interval_s)"
            " SELECT 'BENCH-' || lpad(g::text, 4, '0'), 1, 'bench', 60 FROM generate_series(0, %s) g",
            (DEVICES - 1,),
        )
        conn.execute(
            "INSERT INTO device_assignments (org_id, device_key, shipment_key, during)"
            " SELECT 1, d.key, s.key, tstzrange(now() - interval '30 days', NULL)"
            " FROM devices d JOIN shipments s ON s.id = 'SO-' || (substr(d.id, 7)::int %% %s)",
            (SHIPMENTS,),
        )
        keys = dict(conn.execute("SELECT id, key FROM devices").fetchall())
        ships = dict(conn.execute(
            "SELECT d.key, a.shipment_key FROM devices d JOIN device_assignments a ON a.device_key = d.key"
        ).fetchall())
    return dsn, keys, ships


# --------------------------------------------------------------------------- raw COPY


def measure_copy(dsn: str, keys: dict[str, int], ships: dict[int, int], *, batches: int,
                 per_message: int, base_ms: int, group_batches: int) -> float:
    """numpy -> binary COPY of the same rows, one transaction per group-sized chunk."""
    parts: list[ReadingRows] = []
    for seq in range(batches):
        for dev in range(DEVICES):
            b = make_batch(dev, seq, per_message, base_ms)
            key = keys[b.device]
            n = len(b)
            parts.append(ReadingRows(
                org_id=np.full(n, 1, np.int16), device_key=np.full(n, key, np.int32),
                shipment_key=np.full(n, ships[key], np.int32), seq=np.full(n, seq, np.int64),
                t_ms=b.t_ms, celsius=b.celsius.astype(np.float32), rh=b.rh.astype(np.float32),
                flags=np.zeros(n, np.int16),
            ))
    chunks = [ReadingRows.concat(parts[i : i + group_batches]) for i in range(0, len(parts), group_batches)]
    total = sum(len(c) for c in chunks)
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for chunk in chunks:
            copy_rows(conn, chunk)
            conn.commit()
        elapsed = time.perf_counter() - started
    return total / elapsed


def measure_indexes(server: PostgresServer, *, batches: int, per_message: int, base_ms: int,
                    group_batches: int) -> dict[str, int]:
    """COPY rows/s into readings with its indexes added one at a time (cumulative)."""
    steps = {
        "no_index": None,
        "+device_t_btree": "CREATE INDEX readings_device_t ON readings (device_key, t)",
        "+shipment_t_btree": "CREATE INDEX readings_shipment_t ON readings (shipment_key, t)"
                             " WHERE shipment_key IS NOT NULL",
        "+t_brin": "CREATE INDEX readings_t_brin ON readings USING brin (t) WITH (pages_per_range = 32)",
    }
    figures: dict[str, int] = {}
    for i, label in enumerate(steps):
        dsn, keys, ships = setup_db(server, f"bench_idx{i}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in ("readings_device_t", "readings_shipment_t", "readings_t_brin"):
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            for earlier in list(steps.values())[1 : i + 1]:
                assert earlier is not None
                conn.execute(earlier)
        figures[label] = round(measure_copy(dsn, keys, ships, batches=batches, per_message=per_message,
                                            base_ms=base_ms, group_batches=group_batches))
    return figures


# --------------------------------------------------------------------------- publishers


def publish_worker(url_port: int, prefix: str, devices: list[int], batches: int, per_message: int,
                   base_ms: int, binary: bool, done: mp.Queue) -> None:  # type: ignore[type-arg]
    """One publisher process: QoS 1 with at most 1000 messages in flight (paho's 16-bit ids)."""
    topics = Topics(prefix=prefix)
    slots = threading.Semaphore(1000)
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1
        slots.release()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"bench-pub-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    sent = 0
    for seq in range(batches):
        for dev in devices:
            b = make_batch(dev, seq, per_message, base_ms)
            if binary:
                payload = encode_binary(b)
            else:
                payload = orjson.dumps({"v": 1, "device": b.device, "seq": b.seq, "sent": b.sent_ms,
                                        "readings": [{"t": int(t), "c": float(c)} for t, c in
                                                     zip(b.t_ms, b.celsius, strict=True)]})
            slots.acquire()
            client.publish(topics.readings(b.device), payload, qos=1)
            sent += 1
    while acked[0] < sent:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    done.put(sent)


def load_broker(port: int, prefix: str, *, batches: int, per_message: int, base_ms: int,
                binary: bool = True, processes: int = 4) -> int:
    ctx = mp.get_context("fork")
    done: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=publish_worker, args=(port, prefix, list(range(p, DEVICES, processes)),
                                                 batches, per_message, base_ms, binary, done))
        for p in range(processes)
    ]
    for p in procs:
        p.start()
    sent = sum(done.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return sent


# --------------------------------------------------------------------------- the real ingest


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _start_ingest(
    dsn: str, mqtt_url: str, prefix: str, client_id: str, metrics_port: int
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "--dsn", dsn, "--mqtt-url", mqtt_url, "--topic-prefix", prefix,
         "--client-id", client_id, "--metrics-port", str(metrics_port), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    if b"ingest ready" not in proc.stdout.readline():
        raise RuntimeError("ingest did not start")
    return proc


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def measure_pipeline(server: PostgresServer, broker: MosquittoServer, name: str, *, batches: int,
                     per_message: int, base_ms: int) -> dict[str, float]:
    dsn, _, _ = setup_db(server, name)
    prefix = f"{name}_{ENGINE}/"
    client_id = f"bench-ingest-{name}-{ENGINE}"
    port = free_port()
    # 1. the ingest session and its shared subscription exist; 2. the broker is loaded through
    # them; 3. ingest starts and drains it all.
    proc = _start_ingest(dsn, broker.url, prefix, client_id, port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.stdout is not None
    proc.stdout.close()
    sent = load_broker(broker.port, prefix, batches=batches, per_message=per_message, base_ms=base_ms)
    expected = sent * per_message
    proc = _start_ingest(dsn, broker.url, prefix, client_id, port)
    try:
        deadline = time.monotonic() + 600
        while _count(dsn, "SELECT count(*) FROM batches") < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # let any redelivery show up
        groups = _metric(port, "coldchain_ingest_group_messages_count")
        group_mean = _metric(port, "coldchain_ingest_group_messages_sum") / max(groups, 1)
        first = _metric(port, "coldchain_ingest_first_receive_timestamp_seconds")
        last = _metric(port, "coldchain_ingest_last_commit_timestamp_seconds")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    stored = _count(dsn, "SELECT count(*) FROM readings")
    distinct = _count(dsn, "SELECT count(*) FROM (SELECT DISTINCT device_key, seq, t FROM readings) d")
    linked = _count(dsn, "SELECT count(*) FROM readings WHERE shipment_key IS NOT NULL")
    return {
        "rps": expected / max(last - first, 1e-9),
        "lost": expected - distinct,
        "duplicated": stored - distinct,
        "unlinked": stored - linked,
        "rss_mb": rss_kb / 1024,
        "messages": sent,
        "group_mean": group_mean,
    }


# --------------------------------------------------------------------------- the naive ingestor


def measure_naive(server: PostgresServer, broker: MosquittoServer, *, messages: int, base_ms: int) -> float:
    """The tutorial pattern: one reading per message, INSERT and commit inside on_message."""
    dsn, keys, ships = setup_db(server, "bench_naive")
    prefix = f"bench_naive_{ENGINE}/"
    topics = Topics(prefix=prefix)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    conn = psycopg.connect(dsn)
    times: list[float] = []
    count = [0]

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not times:
            times.append(time.time())
        doc = orjson.loads(msg.payload)
        key = keys[doc["device"]]
        for r in doc["readings"]:
            conn.execute(
                "INSERT INTO readings (org_id, device_key, shipment_key, seq, t, c, flags)"
                " VALUES (1, %s, %s, %s, to_timestamp(%s / 1000.0), %s, 0)",
                (key, ships[key], doc["seq"], r["t"], r["c"]),
            )
        conn.commit()
        count[0] += 1
        if count[0] == messages:
            times.append(time.time())

    def subscriber() -> mqtt.Client:
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-naive-{ENGINE}",
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.on_message = on_message
        ready = threading.Event()
        c.on_subscribe = lambda *a: ready.set()
        c.on_connect = lambda cl, *a: cl.subscribe(topics.all_readings, options=SubscribeOptions(qos=1))
        c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.loop_start()
        ready.wait(10)
        return c

    sub = subscriber()
    sub.disconnect()
    sub.loop_stop()
    per_device = max(1, messages // DEVICES)
    messages = load_broker(broker.port, prefix, batches=per_device, per_message=1, base_ms=base_ms,
                           binary=False)
    sub = subscriber()
    deadline = time.monotonic() + 600
    while len(times) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    sub.disconnect()
    sub.loop_stop()
    conn.close()
    return messages / (times[1] - times[0])


# --------------------------------------------------------------------------- main


def measure_engine(
    server: PostgresServer, broker: MosquittoServer, args: argparse.Namespace
) -> dict[str, Any]:
    """Every figure on the current ENGINE."""
    per_message = 50
    readings = 300_000 if args.quick else 1_500_000
    single = 20_000 if args.quick else 60_000
    naive_messages = 3_000 if args.quick else 10_000
    group_batches = 2000
    batches = readings // (DEVICES * per_message)
    base_ms = int(time.time() * 1000) - batches * per_message * STEP_MS - 60_000
    started = time.monotonic()
    dsn, keys, ships = setup_db(server, "bench_copy")
    copy_rps = measure_copy(dsn, keys, ships, batches=batches, per_message=per_message,
                            base_ms=base_ms, group_batches=group_batches)
    pipe = measure_pipeline(server, broker, "bench_pipeline", batches=batches,
                            per_message=per_message, base_ms=base_ms)
    pipe_single = measure_pipeline(server, broker, "bench_single", batches=single // DEVICES,
                                   per_message=1, base_ms=base_ms)
    naive_rps = measure_naive(server, broker, messages=naive_messages, base_ms=base_ms)
    indexes = (
        measure_indexes(server, batches=batches, per_message=per_message, base_ms=base_ms,
                        group_batches=group_batches)
        if args.indexes and ENGINE == "plain" else None
    )
    result: dict[str, Any] = {
        "engine": ENGINE,
        "readings": batches * DEVICES * per_message,
        "per_message": per_message,
        "copy_rps": round(copy_rps),
        "pipeline_rps": round(pipe["rps"]),
        "pipeline_single_rps": round(pipe_single["rps"]),
        "naive_rps": round(naive_rps),
        "ratio_copy": round(pipe["rps"] / copy_rps, 3),
        "ratio_naive": round(pipe["rps"] / naive_rps, 1),
        "lost": int(pipe["lost"] + pipe_single["lost"]),
        "duplicated": int(pipe["duplicated"] + pipe_single["duplicated"]),
        "unlinked": int(pipe["unlinked"] + pipe_single["unlinked"]),
        "ingest_rss_mb": round(max(pipe["rss_mb"], pipe_single["rss_mb"]), 1),
        "group_mean_messages": round(pipe["group_mean"]),
        "seconds": round(time.monotonic() - started, 1),
    }
    if indexes is not None:
        result["copy_rps_by_index"] = indexes
    return result


def main() -> int:
    global ENGINE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (about a minute per engine)")
    parser.add_argument("--engine", choices=("both", "timescale", "plain"), default="both",
                        help="both (where TimescaleDB is installed), or one of them")
    parser.add_argument("--indexes", action="store_true",
                        help="also measure COPY with each readings index added in turn (plain)")
    args = parser.parse_args()
    started = time.monotonic()
    per_engine: dict[str, dict[str, Any]] = {}
    timescale = None if args.engine != "plain" else False
    with PostgresServer(timescale=timescale) as server, BenchBroker() as broker:
        if args.engine == "both":
            engines = ["timescale", "plain"] if server.timescale else ["plain"]
        elif args.engine == "timescale" and not server.timescale:
            raise SystemExit("TimescaleDB is not installed here")
        else:
            engines = [args.engine]
        for engine in engines:
            ENGINE = engine
            per_engine[engine] = measure_engine(server, broker, args)
    result = {**per_engine[engines[0]], "engines": per_engine}
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
