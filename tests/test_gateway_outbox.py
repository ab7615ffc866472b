"""The edge agent's pure parts: outbox sealing/ack/bound policy, local alarm, GPIO output, config."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coldchain.errors import ConfigurationError
from coldchain.wire import DeviceConfig, decode_batch, encode_binary, encode_json
from gateway_agent.agent import Agent, resolve_profile
from gateway_agent.alarm import ConsoleOutput, GpioOutput, LocalAlarm, LocalProfile, SysfsGpioPin
from gateway_agent.clock import ManualClock
from gateway_agent.config import AgentSettings, DeviceSettings
from gateway_agent.drivers.base import Sample
from gateway_agent.outbox import Outbox
from gateway_agent.publisher import backoff_delays

T0 = 1_795_000_000_000


def _samples(device: str, n: int, *, start: int = 0, step_ms: int = 60_000) -> list[Sample]:
    return [
        Sample(device, T0 + (start + i) * step_ms, 4.0 + (start + i) % 7 * 0.1, 60.0)
        for i in range(n)
    ]


def test_seal_assigns_consecutive_seqs_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as outbox:
        assert outbox._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        outbox.add(_samples("A", 25))
        assert outbox.seal("A", batch_size=10, max_age_s=3600, now_ms=T0) == 2
        assert outbox.depth("A").raw_readings == 5
    with Outbox(path) as outbox:  # a restart keeps the numbering and the remainder
        outbox.add(_samples("A", 5, start=25))
        assert outbox.seal("A", batch_size=10, max_age_s=3600, now_ms=T0) == 1
        pending = outbox.pending("A")
        assert [b.seq for b in pending] == [1, 2, 3]
        assert np.array_equal(
            np.concatenate([b.t_ms for b in pending]), [s.t_ms for s in _samples("A", 30)]
        )
        outbox.acknowledge([pending[0].id])
        assert [b.seq for b in outbox.pending("A")] == [2, 3]
        # The acked seq is never given again.
        outbox.add(_samples("A", 10, start=30))
        outbox.seal("A", batch_size=10, max_age_s=3600, now_ms=T0)
        assert [b.seq for b in outbox.pending("A")] == [2, 3, 4]


def test_partial_batch_leaves_by_age_and_seq_floor(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        outbox.add(_samples("B", 3))
        assert outbox.seal("B", batch_size=10, max_age_s=600, now_ms=T0 + 300_000) == 0
        assert outbox.seal("B", batch_size=10, max_age_s=600, now_ms=T0 + 600_000, seq_floor=500) == 1
        [batch] = outbox.pending("B")
        assert (batch.seq, len(batch)) == (500, 3)
        wire = decode_batch(encode_binary(batch.to_wire(sent_ms=T0)))
        assert wire.device == "B" and wire.seq == 500 and len(wire) == 3


def test_batch_columns_on_disk_and_payloads_match_the_platform_codec(tmp_path: Path) -> None:
    samples = [
        Sample("E", T0, 4.25, 61.5),
        Sample("E", T0 + 60_000, -1.1, None, {"door": 1}),
        Sample("E", T0 + 120_000, 7.3),
    ]
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        outbox.add(samples)
        outbox.seal("E", batch_size=3, max_age_s=3600, now_ms=T0)
        # The stored columns are little-endian int64 / float64 blobs, NaN for no humidity.
        t, c, rh = outbox._db.execute("SELECT t, c, rh FROM batch").fetchone()
        assert t == struct.pack("<3q", T0, T0 + 60_000, T0 + 120_000)
        assert c == struct.pack("<3d", 4.25, -1.1, 7.3)
        assert rh[:8] == struct.pack("<d", 61.5) and all(map(math.isnan, struct.unpack("<2d", rh[8:])))
        [batch] = outbox.pending("E")
        # The agent encodes without numpy; the platform's codec must see the very same bytes.
        wire = batch.to_wire(sent_ms=T0 + 180_000)
        assert batch.payload(T0 + 180_000) == encode_binary(wire)
        assert batch.payload(T0 + 180_000, form="json") == encode_json(wire)
        decoded = decode_batch(batch.payload(T0 + 180_000, form="json"))
        assert decoded == wire and decoded.extras == (None, {"door": 1}, None)
        assert decoded.rh[0] == 61.5 and math.isnan(decoded.rh[1])


def test_full_outbox_summarises_oldest_readings_never_drops(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_readings=1000, summary_bucket_s=900) as outbox:
        samples = _samples("C", 1500)
        for i in range(0, 1500, 100):
            outbox.add(samples[i : i + 100])
            outbox.seal("C", batch_size=60, max_age_s=86_400, now_ms=T0)
        depth = outbox.depth("C")
        assert depth.readings <= 1000
        pending = outbox.pending("C", limit=1000)
        assert [b.seq for b in pending] == list(range(1, 26))  # every batch still there
        # Every original reading is accounted for: raw, or inside a summary's n.
        counted = 0
        for batch in pending:
            for extra in batch.extras or (None,) * len(batch):
                counted += (extra or {}).get("n", 1)
        assert counted == 1500
        first = pending[0]
        summary = (first.extras or (None,))[0] or {}
        assert summary["summary"] == 1
        originals = [s.celsius for s in samples[:15]]  # the first 15-minute bucket
        assert summary["min_c"] == pytest.approx(min(originals))
        assert summary["max_c"] == pytest.approx(max(originals))
        assert first.celsius[0] == pytest.approx(sum(originals) / 15)
        assert int(outbox.meta("summarised_readings") or 0) > 0
        # A summarised batch still goes out as a valid batch under its seq.
        wire = decode_batch(first.payload(T0))
        assert (wire.seq, len(wire)) == (1, len(first))
        assert ((wire.extras or (None,))[0] or {}).get("summary") == 1


def test_local_alarm_delay_hysteresis_and_outputs(tmp_path: Path) -> None:
    gpio = tmp_path / "gpio"
    (gpio / "gpio17").mkdir(parents=True)
    (gpio / "export").write_text("")
    console = io.StringIO()
    alarm = LocalAlarm([ConsoleOutput(console), GpioOutput(SysfsGpioPin(17, root=gpio))])
    profile = LocalProfile.from_dict(
        {
            "id": "2-8C",
            "future_key": True,
            "hysteresis_c": 0.5,
            "limits": [
                {"id": "H1", "side": "high", "threshold_c": 8.0, "single_event_delay_s": 1800,
                 "tier": "alarm"},
                {"id": "L1", "side": "low", "threshold_c": 2.0, "single_event_delay_s": 0},
                {"id": "CUM", "side": "high", "threshold_c": 8.0, "cumulative_budget_s": 60},
            ],
        }
    )
    assert [limit.id for limit in profile.limits] == ["H1", "L1"]
    alarm.set_profile("D", profile)
    temps = [5.0] + [8.0] * 30 + [8.2, 7.8, 7.4]  # inclusive threshold; 30 min to raise
    events = []
    for i, c in enumerate(temps):
        events += alarm.observe(Sample("D", T0 + i * 60_000, c))
    assert [(e.limit_id, e.raised, (e.t_ms - T0) // 60_000) for e in events] == [
        ("H1", True, 31),
        ("H1", False, 33),  # 7.8 is within the 0.5 hysteresis; 7.4 clears
    ]
    assert (gpio / "gpio17" / "value").read_text() == "0"
    assert (gpio / "gpio17" / "direction").read_text() == "out"
    alarm.observe(Sample("D", T0 + 40 * 60_000, 1.5))
    assert alarm.active("D") == ["L1"]
    assert (gpio / "gpio17" / "value").read_text() == "1"
    assert "ALARM: D limit L1" in console.getvalue()


def test_config_applies_without_restart_and_refuses_bad_settings(tmp_path: Path) -> None:
    settings = AgentSettings(
        data_dir=tmp_path,
        console_alarm=False,
        devices=(
            DeviceSettings(id="D1", driver="simulated", profile="2-8C", options={"celsius": 9.0}),
        ),
    )
    clock = ManualClock(T0)
    with Agent(settings, clock=clock) as agent:
        assert agent.configs["D1"].profile is not None  # the 2-8C preset until the platform speaks
        agent.apply_config(
            "D1",
            DeviceConfig(version=3, interval_s=30, batch_size=2,
                         profile={"limits": [{"id": "HX", "side": "high", "threshold_c": 8.5,
                                              "single_event_delay_s": 0}]}),
        )
        agent.sample_once()
        clock.advance(30)
        agent.sample_once()
        assert agent.alarm.active("D1") == ["HX"]
        assert agent.outbox.depth("D1").batches == 1  # batch size 2 applied
        snap = agent.refresh_snapshot()
        assert snap["devices"]["D1"]["config_version"] == 3
        assert snap["devices"]["D1"]["c"] == 9.0
    with pytest.raises(ConfigurationError):
        AgentSettings.from_dict({"device": [{"id": "D1", "driver": "thermocouple"}]})
    with pytest.raises(ConfigurationError):
        AgentSettings.from_dict({"mqtt_url": "http://x", "device": []})
    with pytest.raises(ConfigurationError, match="unknown"):
        AgentSettings.from_dict({"device": [{"id": "D1", "driver": "simulated", "colour": 1}]})


def _config_file(path: Path, interval_s: int, *, extra: str = "", profile: str = "2-8C") -> Path:
    path.write_text(
        f'data_dir = "{path.parent}"\nconsole_alarm = false\n'
        f'[[device]]\nid = "D1"\ndriver = "simulated"\nprofile = "{profile}"\ninterval_s = {interval_s}\n'
        f'[[device]]\nid = "D2"\ndriver = "simulated"\ninterval_s = {interval_s}\n' + extra
    )
    return path


def test_reload_applies_the_file_where_the_platform_has_not_spoken(tmp_path: Path) -> None:
    config = _config_file(tmp_path / "agent.toml", 60)
    with Agent(AgentSettings.load(config), clock=ManualClock(T0)) as agent:
        agent.apply_config("D2", DeviceConfig(version=4, interval_s=15))  # the platform's, for D2
        d3 = '[[device]]\nid = "D3"\ndriver = "simulated"\n'
        restart = agent.reload(AgentSettings.load(_config_file(config, 120, profile="frozen-20C", extra=d3)))
        assert restart == ["logger D3 added"]
        assert (agent.configs["D1"].interval_s, agent.configs["D1"].version) == (120, 0)
        assert agent.configs["D1"].profile == resolve_profile("frozen-20C")
        assert (agent.configs["D2"].interval_s, agent.configs["D2"].version) == (15, 4)  # platform wins
        before = agent.configs["D1"]
        bad = _config_file(config, 30, profile="no-such-profile")
        with pytest.raises(ConfigurationError, match="D1"):
            agent.reload(AgentSettings.load(bad))
        assert agent.configs["D1"] == before  # nothing half-applied


def test_sighup_reloads_the_running_agent_and_a_bad_file_is_refused(tmp_path: Path) -> None:
    config = _config_file(tmp_path / "agent.toml", 60)
    state = tmp_path / "state.json"
    repo = Path(__file__).resolve().parent.parent
    with open(tmp_path / "agent.log", "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway_agent.cli", "--config", str(config), "run", "--no-sample"],
            cwd=repo,
            env=dict(os.environ, PYTHONPATH=str(repo)),
            stderr=log_file,
        )

    def interval_of_d1(expected: int) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(state.read_text())["devices"]["D1"]["interval_s"] == expected:
                    return True
            time.sleep(0.05)
        return False

    try:
        assert interval_of_d1(60)
        _config_file(config, 300)
        proc.send_signal(signal.SIGHUP)
        assert interval_of_d1(300)
        config.write_text("this is not toml = = =")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while b"reload refused" not in (tmp_path / "agent.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"reload refused" in (tmp_path / "agent.log").read_bytes()
        assert proc.poll() is None and interval_of_d1(300)  # still running, on the last good config
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    delay = backoff_delays(1.0, 60.0, rng=random.Random(4))
    values = [delay(n) for n in range(12)]
    assert 0.5 <= values[0] <= 1.0
    assert all(30.0 <= v <= 60.0 for v in values[7:])
    assert values[3] > values[0] and not math.isclose(values[9], values[10])


def test_local_status_page_serves_text_and_json() -> None:
    import json
    import urllib.request

    from gateway_agent.status import StatusServer

    snapshot = {"updated_ms": T0, "alarms": ["D:H1"],
                "devices": {"D": {"c": 9.5, "t_ms": T0, "alarms": ["H1"], "queue_readings": 3}}}
    server = StatusServer(port=0, snapshot=lambda: snapshot)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/status.json", timeout=5) as resp:
            assert json.loads(resp.read()) == snapshot
        with urllib.request.urlopen(f"{base}/", timeout=5) as resp:
            page = resp.read().decode()
        assert "ALARM: D:H1" in page and "9.50 °C" in page and "queue 3 readings" in page
    finally:
        server.stop()


def test_summaries_weigh_humidity_by_the_readings_they_stand_for() -> None:
    from array import array

    from gateway_agent.outbox import PendingBatch, _summarise

    # A summary of 3 readings (mean 4 °C, 40 %RH) folded with one raw reading (8 °C, 80 %RH).
    batch = PendingBatch(
        id=1, device="D", seq=1, created_ms=0,
        t_ms=array("q", [0, 60_000]), celsius=array("d", [4.0, 8.0]), rh=array("d", [40.0, 80.0]),
        extras=({"summary": 1, "n": 3, "min_c": 3.0, "max_c": 5.0, "t_last": 0}, None),
    )
    _, celsius, rh, extras = _summarise(batch, None)
    assert extras[0]["n"] == 4
    assert celsius == [pytest.approx(5.0)]
    assert rh == [pytest.approx(50.0)]  # (3 x 40 + 80) / 4, not (40 + 80) / 2
