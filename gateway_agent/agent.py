"""The agent: sample every driver on its interval, store to the outbox, seal batches, evaluate the
local alarm, keep one publisher per device running, and write the state `gateway-agent status`
reads."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coldchain.errors import ColdchainError, ConfigurationError
from coldchain.wire import DeviceConfig
from gateway_agent.alarm import (
    AlarmOutput,
    ConsoleOutput,
    GpioOutput,
    LocalAlarm,
    LocalProfile,
    SysfsGpioPin,
)
from gateway_agent.clock import Clock, SystemClock
from gateway_agent.config import AgentSettings, DeviceSettings
from gateway_agent.drivers import Driver, Sample, SampleSource, build_driver
from gateway_agent.errors import DriverError
from gateway_agent.outbox import Outbox
from gateway_agent.publisher import DevicePublisher

log = logging.getLogger(__name__)


def resolve_profile(profile: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """A local alarm profile: an inline dict, or the id of a built-in platform preset."""
    if profile is None or isinstance(profile, Mapping):
        return dict(profile) if profile else None
    from coldchain.presets import get_preset

    return get_preset(profile).to_dict()


def file_config(device: DeviceSettings) -> DeviceConfig:
    """A logger's config as the file gives it (version 0: until the platform sends one)."""
    return DeviceConfig(
        version=0,
        interval_s=device.interval_s,
        batch_size=device.batch_size,
        batch_age_s=device.batch_age_s,
        profile=resolve_profile(device.profile),
    )


def default_outputs(settings: AgentSettings) -> list[AlarmOutput]:
    outputs: list[AlarmOutput] = []
    if settings.console_alarm:
        outputs.append(ConsoleOutput())
    for pin in (settings.gpio_buzzer, settings.gpio_led):
        if pin is not None:
            outputs.append(GpioOutput(SysfsGpioPin(pin, root=settings.gpio_root)))
    return outputs


def _read_number(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Agent:
    """Owns the outbox, the drivers, the local alarm and the publishers; see the module docstring."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        drivers: Mapping[str, Driver] | None = None,
        sources: Mapping[str, SampleSource] | None = None,
        clock: Clock | None = None,
        outputs: Sequence[AlarmOutput] | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.outbox = Outbox(
            settings.outbox_path,
            max_readings=settings.max_readings,
            summary_bucket_s=settings.summary_bucket_s,
        )
        self.devices: dict[str, DeviceSettings] = {d.id: d for d in settings.devices}
        if drivers is None:
            sources = sources or {}
            drivers = {d.id: build_driver(d, source=sources.get(d.id)) for d in settings.devices}
        self.drivers: dict[str, Driver] = dict(drivers)
        self.alarm = LocalAlarm(default_outputs(settings) if outputs is None else outputs)
        self.configs: dict[str, DeviceConfig] = {}
        for device in settings.devices:
            self.configs[device.id] = file_config(device)
            self.alarm.set_profile(device.id, LocalProfile.from_dict(self.configs[device.id].profile))
        self.latest: dict[str, Sample] = {}
        self.driver_errors: dict[str, str] = {}
        self.publishers: dict[str, DevicePublisher] = {}
        if settings.mqtt_url is not None:
            for device in settings.devices:
                self.publishers[device.id] = DevicePublisher(
                    device=device,
                    settings=settings,
                    outbox=self.outbox,
                    clock=self.clock,
                    on_config=self.apply_config,
                    status_extra=self._power_and_signal,
                )
        self._next_due: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self.snapshot: dict[str, Any] = {}

    # ------------------------------------------------------------------ sampling

    def sample_once(self, device_ids: Sequence[str] | None = None) -> list[Sample]:
        """Read the given drivers (all by default) now, store, seal and evaluate."""
        now = self.clock.now_ms()
        samples = self._read(device_ids or list(self.drivers), now)
        self.store(samples, now_ms=now)
        return samples

    def _read(self, device_ids: Sequence[str], now_ms: int) -> list[Sample]:
        samples: list[Sample] = []
        for device_id in device_ids:
            try:
                samples.extend(self.drivers[device_id].read(now_ms))
                self.driver_errors.pop(device_id, None)
            except (DriverError, ColdchainError) as exc:
                if self.driver_errors.get(device_id) != str(exc):
                    log.warning("device %s: sensor not read: %s", device_id, exc)
                self.driver_errors[device_id] = str(exc)
        return samples

    def store(self, samples: Sequence[Sample], *, now_ms: int) -> None:
        """Outbox first, then batches, then the local alarm (which must not delay storage)."""
        self.outbox.add(samples)
        for sample in samples:
            self.latest[sample.device_id] = sample
        self.seal(now_ms=now_ms)
        for sample in samples:
            self.alarm.observe(sample)
        self.refresh_snapshot()

    def seal(self, *, now_ms: int, force: bool = False) -> int:
        sealed = 0
        for device in self.settings.devices:
            config = self.configs[device.id]
            n = self.outbox.seal(
                device.id,
                batch_size=config.batch_size,
                max_age_s=config.batch_age_s,
                now_ms=now_ms,
                seq_floor=device.seq_floor,
                force=force,
            )
            if n and device.id in self.publishers:
                self.publishers[device.id].wake.set()
            sealed += n
        return sealed

    async def _sampler(self) -> None:
        for device_id in self.drivers:
            self._next_due[device_id] = self.clock.now_ms()
        while True:
            now = self.clock.now_ms()
            due = [d for d, t in self._next_due.items() if t <= now]
            if due:
                samples = await asyncio.to_thread(self._read, due, now)
                self.store(samples, now_ms=now)
                for device_id in due:
                    interval_ms = self.configs[device_id].interval_s * 1000
                    while self._next_due[device_id] <= now:
                        self._next_due[device_id] += interval_ms
            else:
                self.seal(now_ms=now)
            wait_ms = min(self._next_due.values(), default=now + 1000) - self.clock.now_ms()
            await self.clock.sleep(max(0.0, min(wait_ms / 1000, 5.0)))

    # ------------------------------------------------------------------ config and state

    def apply_config(self, device_id: str, config: DeviceConfig) -> None:
        """Apply the platform's config without a restart (raises on a bad profile)."""
        profile = LocalProfile.from_dict(config.profile)
        self.configs[device_id] = config
        self.alarm.set_profile(device_id, profile)
        if device_id in self._next_due:
            self._next_due[device_id] = min(
                self._next_due[device_id], self.clock.now_ms() + config.interval_s * 1000
            )
        self.refresh_snapshot()

    def reload(self, settings: AgentSettings) -> list[str]:
        """Apply an edited config file (SIGHUP) without a restart; returns what still needs one.

        A logger's interval, batching and local alarm profile follow the file unless the platform
        has sent a config of its own (version > 0), which stays in force. Anything that changes
        connections or drivers (broker, credentials, driver, added or removed loggers) is only
        reported: those take a restart. Raises ConfigurationError, changing nothing, when a
        profile in the file is invalid.
        """
        restart: list[str] = []
        fresh = {d.id: d for d in settings.devices}
        for device_id in sorted(set(fresh) ^ set(self.devices)):
            restart.append(f"logger {device_id} {'added' if device_id in fresh else 'removed'}")
        connection_keys = ("mqtt_url", "topic_prefix", "ca_file", "data_dir", "status_port")
        restart += [key for key in connection_keys if getattr(settings, key) != getattr(self.settings, key)]
        staged: dict[str, DeviceConfig] = {}
        for device_id in sorted(set(fresh) & set(self.devices)):
            new, old = fresh[device_id], self.devices[device_id]
            fields = ("driver", "options", "username", "password", "password_file", "cert_file", "key_file")
            restart += [f"{device_id}.{key}" for key in fields if getattr(new, key) != getattr(old, key)]
            if self.configs[device_id].version > 0:
                continue  # the platform's config wins over the file's defaults
            try:
                staged[device_id] = file_config(new)
                LocalProfile.from_dict(staged[device_id].profile)
            except (ColdchainError, ValueError, TypeError, KeyError) as exc:
                raise ConfigurationError(f"logger {device_id}: bad profile: {exc}") from None
        for device_id, config in staged.items():
            self.devices[device_id] = fresh[device_id]
            self.apply_config(device_id, config)
        return restart

    def _power_and_signal(self) -> dict[str, Any]:
        battery = _read_number(self.settings.battery_file)
        return {
            "battery": None if battery is None else round(min(max(battery / 100.0, 0.0), 1.0), 3),
            "signal_dbm": _read_number(self.settings.signal_file),
        }

    def refresh_snapshot(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for device_id in self.devices:
            sample = self.latest.get(device_id)
            link = self.publishers[device_id].link if device_id in self.publishers else None
            depth = self.outbox.depth(device_id)
            devices[device_id] = {
                "t_ms": sample.t_ms if sample else None,
                "c": sample.celsius if sample else None,
                "rh": sample.rh if sample else None,
                "alarms": self.alarm.active(device_id),
                "sensor_error": self.driver_errors.get(device_id),
                "queue_readings": depth.readings,
                "queue_batches": depth.batches,
                "next_seq": self.outbox.next_seq(device_id),
                "config_version": self.configs[device_id].version,
                "interval_s": self.configs[device_id].interval_s,
                "connected": link.connected if link else False,
                "last_contact_ms": link.last_contact_ms if link else None,
                "refused": link.refused if link else 0,
            }
        self.snapshot = {
            "updated_ms": self.clock.now_ms(),
            "pid": os.getpid(),
            "devices": devices,
            "alarms": self.alarm.active(),
            **self._power_and_signal(),
        }
        return self.snapshot

    def write_state(self) -> None:
        """The state file `gateway-agent status` reads (written atomically)."""
        path = self.settings.state_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.refresh_snapshot(), indent=1))
        os.replace(tmp, path)

    async def _state_writer(self) -> None:
        while True:
            self.write_state()
            await asyncio.sleep(2.0)

    # ------------------------------------------------------------------ running

    async def run(self, *, sample: bool = True, status_server: bool = True) -> None:
        """Run until `stop()` (or cancellation); publishers drain the outbox meanwhile."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(socket_race_handler(previous))
        try:
            await self._run(sample=sample, status_server=status_server)
        finally:
            loop.set_exception_handler(previous)

    async def _run(self, *, sample: bool, status_server: bool) -> None:
        server = None
        if status_server and self.settings.status_port:
            from gateway_agent.status import StatusServer

            server = StatusServer(port=self.settings.status_port, snapshot=lambda: self.snapshot)
            server.start()
        try:
            async with asyncio.TaskGroup() as tg:
                for device_id, publisher in self.publishers.items():
                    tg.create_task(publisher.run(), name=f"publisher-{device_id}")
                tasks = [tg.create_task(self._state_writer(), name="state")]
                if sample:
                    tasks.append(tg.create_task(self._sampler(), name="sampler"))
                await self._stopping.wait()
                for publisher in self.publishers.values():
                    publisher.stop()
                for task in tasks:
                    task.cancel()
        finally:
            if server is not None:
                server.stop()
            with contextlib.suppress(OSError):
                self.write_state()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                driver.close()
        self.outbox.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ExceptionHandler = Any  # asyncio's (loop, context) -> None, or None for the default


def socket_race_handler(previous: ExceptionHandler) -> ExceptionHandler:
    """An event-loop exception handler that lets one known race pass with a warning: paho closes
    a socket (the broker or the network dropped it) before aiomqtt's scheduled callback registers
    it with the loop, and the callback fails with EBADF. Nothing is lost: the publisher sees the
    disconnection and reconnects, and unacknowledged batches stay in the outbox. Anything else
    goes to the handler that was there before."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno == errno.EBADF
            and "aiomqtt" in repr(context.get("handle", ""))
        ):
            log.warning("an MQTT socket closed before the event loop took it; the publisher reconnects")
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    return handle
