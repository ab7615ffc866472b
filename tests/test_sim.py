"""The simulator: deterministic physics and faults, presets and TOML files, the fleet against a
real broker (seq continuation, binary and JSON), the CLI, and the bridge to the gateway agent."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coldchain.wire import Topics, decode_batch
from embedded import MosquittoServer
from firmware_sim import Faults, Fleet, LoggerSpec, Scenario, SimLogger, get_scenario, list_scenarios
from firmware_sim.cli import main as sim_main

T0 = 1_795_000_000_000  # 2026-11-18 ~ 10:13 UTC


def _logger(name: str, **kw: object) -> SimLogger:
    return SimLogger(get_scenario(name), device_id="SIM-1", start_ms=T0, **kw)  # type: ignore[arg-type]


def test_required_presets_exist_and_files_load() -> None:
    names = set(list_scenarios())
    assert {"reefer-door-open", "reefer-compressor-failure", "reefer-ok", "passive-shipper",
            "cold-room"} <= names
    assert {"reefer-network-outage", "passive-48h", "cold-room-power-cut",
            "reefer-summer-heat"} <= names  # the shipped TOML files
    path = Path(__file__).resolve().parents[1] / "firmware_sim/scenarios/passive-48h.toml"
    assert get_scenario(str(path)).params["spent_h"] == 48.0


def test_same_seed_same_readings_and_stretches_agree() -> None:
    a, b = _logger("reefer-ok", seed=7), _logger("reefer-ok", seed=7)
    whole = a.readings(0, 600)
    assert np.array_equal(whole.celsius, b.readings(0, 600).celsius)
    pieces = np.concatenate([a.readings(i, i + 10).celsius for i in range(0, 600, 10)])
    assert np.array_equal(pieces, whole.celsius)  # any stretch can be generated on its own
    assert not np.array_equal(whole.celsius, _logger("reefer-ok", seed=8).readings(0, 600).celsius)


def test_reefer_ok_holds_its_setpoint() -> None:
    day = _logger("reefer-ok").readings(0, 1440)
    assert 3.0 < day.celsius.mean() < 7.0
    assert np.percentile(day.celsius, 95) < 8.0


def test_door_open_excursion_above_8c_for_20_minutes_early() -> None:
    readings = _logger("reefer-door-open").readings(0, 180)
    above = readings.celsius > 8.0
    first = int(np.argmax(above))
    run = int(np.argmax(~above[first:]))
    assert 10 <= first <= 25  # starts early, so a demo alert shows within a minute at 60x
    assert run >= 30  # more than the 2-8C profile's 30-minute delay
    assert readings.extras is not None and readings.extras[first] == {"door": 1}


def test_compressor_failure_and_passive_shipper_warm_to_ambient() -> None:
    failing = _logger("reefer-compressor-failure").readings(0, 24 * 60).celsius
    assert failing[:10].max() < 8.0 and failing[-60:].min() > 15.0
    shipper = _logger("passive-shipper").readings(0, 24 * 60).celsius
    assert shipper[: 3 * 60].max() < 8.0 and shipper[-60:].mean() > 15.0


def test_faults_power_loss_drift_stuck_spikes_battery() -> None:
    scenario = Scenario(
        name="faulty", kind="cold-room",
        faults=Faults(power_loss=((1.0, 2.0),), clock_drift_ppm=1000.0, stuck_at_h=5.0,
                      spike_rate=0.05, battery_h=8.0, network_loss=((6.0, 1.0),),
                      duplicate_rate=0.5),
    )
    logger = SimLogger(scenario, device_id="F-1", start_ms=T0, seed=3)
    stretch = logger.readings(0, 12 * 60)
    true_minutes = (stretch.t_ms - T0) / 60_000 / 1.001
    assert not ((true_minutes >= 60) & (true_minutes < 180)).any()  # powered off
    assert true_minutes.max() < 8 * 60  # battery flat after 8 h
    assert len(stretch) == 8 * 60 - 120
    assert stretch.t_ms[-1] - T0 == round((8 * 60 - 1) * 60_000 * 1.001)  # clock gains 1000 ppm
    late = stretch.celsius[true_minutes >= 5 * 60]
    assert (np.abs(late - late[0]) > 5).sum() > 0  # spikes still happen on a stuck probe
    assert np.median(late) == late[0]  # otherwise it repeats one value
    assert logger.network_down(6.5 * 3600) and not logger.network_down(7.5 * 3600)
    assert any(logger.duplicate(s) for s in range(20))
    assert logger.battery(4 * 3600) == pytest.approx(0.5)


def test_unknown_param_is_refused() -> None:
    from coldchain.errors import ValidationError

    with pytest.raises(ValidationError):
        Scenario(name="x", kind="reefer", params={"setpoint": 5})
    with pytest.raises(ValidationError):
        get_scenario("no-such-thing")


class _Collector:
    def __init__(self, port: int, topic: str) -> None:
        self.batches: list = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert ready.wait(10)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.batches.append(decode_batch(msg.payload))

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.batches) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.batches) >= n

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_fleet_publishes_and_continues_seq_across_runs(
    mqtt_server: MosquittoServer, topics: Topics, tmp_path: Path
) -> None:
    sub = _Collector(mqtt_server.port, topics.all_readings)
    specs = [LoggerSpec(device_id=f"SIM-{i}", scenario=s, seed=i, batch_size=10)
             for i, s in enumerate(["reefer-door-open", "cold-room", "passive-shipper"])]
    state = tmp_path / "fleet-state.json"
    try:
        with Fleet(mqtt_url=mqtt_server.url, topics=topics, loggers=specs, start_ms=T0,
                   state_file=state) as fleet:
            pass  # start/stop with nothing due yet is clean
        assert fleet.published == 0
        first = Fleet(mqtt_url=mqtt_server.url, topics=topics, loggers=specs, start_ms=T0,
                      state_file=state)
        assert first.run_for(3600 * 2) == 36  # 12 batches of 10 minutes per logger
        first.stop()
        assert first.published == 36
        second = Fleet(mqtt_url=mqtt_server.url, topics=topics, loggers=specs, start_ms=T0,
                       payload="json", state_file=state)
        assert second.next_seq == {"SIM-0": 13, "SIM-1": 13, "SIM-2": 13}
        second.run_for(3600)
        second.stop()
        third = Fleet(mqtt_url=mqtt_server.url, topics=topics, loggers=specs[:1], start_ms=T0,
                      seq_start={"SIM-0": 100})
        third.run_for(600)
        third.stop()
        sub.wait_for(36 + 18 + 1)
        seqs = [b.seq for b in sub.batches if b.device == "SIM-0"]
        assert seqs == [*range(1, 19), 100]
        door = [b for b in sub.batches if b.device == "SIM-0"][:12]
        assert max(float(b.celsius.max()) for b in door) > 8.0
        assert all(len(b) == 10 for b in sub.batches)
    finally:
        sub.close()


def test_fleet_paced_by_time_scale(mqtt_server: MosquittoServer, topics: Topics) -> None:
    sub = _Collector(mqtt_server.port, topics.all_readings)
    specs = [LoggerSpec(device_id=f"PACE-{i}", scenario="reefer-ok", interval_s=60,
                        batch_size=1, seed=i) for i in range(50)]
    try:
        fleet = Fleet(mqtt_url=mqtt_server.url, topics=topics, loggers=specs,
                      time_scale=3600.0, start_ms=T0)
        with fleet:
            deadline = time.monotonic() + 20
            while fleet.published < 100 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert fleet.published >= 100
        sub.wait_for(fleet.published)
        for i in range(3):
            mine = [b.seq for b in sub.batches if b.device == f"PACE-{i}"]
            assert mine == list(range(1, len(mine) + 1))
    finally:
        sub.close()


def test_cli_device_csv_and_fleet(mqtt_server: MosquittoServer, topics: Topics,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["device", "--scenario", "cold-room", "--hours", "1", "--start-ms",
                     str(T0)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "t,c,rh" and len(lines) == 61
    sub = _Collector(mqtt_server.port, topics.all_readings)
    try:
        assert sim_main(["fleet", "--mqtt-url", mqtt_server.url, "--topic-prefix", topics.prefix,
                         "--count", "40", "--scenario", "reefer-ok=3", "--scenario",
                         "cold-room=1", "--hours", "1", "--start-ms", str(T0)]) == 0
        sub.wait_for(40 * 6)
        assert len({b.device for b in sub.batches}) == 40
        assert "240 batches acked" in capsys.readouterr().err
    finally:
        sub.close()


def test_sim_drives_the_real_gateway_agent(mqtt_server: MosquittoServer, topics: Topics,
                                           tmp_path: Path) -> None:
    sub = _Collector(mqtt_server.port, topics.all_readings)
    try:
        assert sim_main(["agent", "--mqtt-url", mqtt_server.url, "--topic-prefix", topics.prefix,
                         "--scenario", "reefer-door-open", "--hours", "3", "--device-id",
                         "GW-SIM-1", "--data-dir", str(tmp_path), "--start-ms", str(T0)]) == 0
        sub.wait_for(18)
        times = np.concatenate([b.t_ms for b in sub.batches])
        assert [b.seq for b in sub.batches] == list(range(1, 19))
        assert np.array_equal(times, T0 + np.arange(180) * 60_000)
        celsius = np.concatenate([b.celsius for b in sub.batches])
        assert (celsius > 8.0).sum() >= 30  # the door-open excursion went through the agent
    finally:
        sub.close()
