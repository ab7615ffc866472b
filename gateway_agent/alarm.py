"""The local alarm: high/low limits with a single-event delay, evaluated on the device itself so
the driver is warned with no network, and the outputs that warn (console, GPIO buzzer or LED).

The profile is the `profile` of the platform's DeviceConfig: ``{"limits": [{"id", "side",
"threshold_c", "single_event_delay_s", ...}], "hysteresis_c": 0.5, "start_delay_s": 600}``.
Unknown keys are ignored here (the platform validates profiles; the edge only needs these few),
and a limit without a single-event delay (a cumulative-only limit) is left to the platform.
A limit's `inclusive` decides as on the platform (rules/engine.py): inclusive, 8.0 °C is beyond a
high limit of 8.0 °C; exclusive (the platform's default, and its 2-8 °C preset), only above it.
The platform's config always states it; a hand-written limit without the key stays inclusive,
as the edge always treated it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from coldchain.errors import ValidationError
from gateway_agent.drivers.base import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalLimit:
    id: str
    side: str
    threshold_c: float
    delay_s: float
    inclusive: bool = True

    def __post_init__(self) -> None:
        if self.side not in ("high", "low"):
            raise ValidationError("side must be 'high' or 'low'", field="side")
        if self.delay_s < 0:
            raise ValidationError("delay must not be negative", field="single_event_delay_s")

    def beyond(self, celsius: float, hysteresis_c: float = 0.0) -> bool:
        """Beyond the limit (with the hysteresis: not yet back inside by that much)."""
        if self.side == "high":
            edge = self.threshold_c - hysteresis_c
            return celsius >= edge if self.inclusive else celsius > edge
        edge = self.threshold_c + hysteresis_c
        return celsius <= edge if self.inclusive else celsius < edge


@dataclass(frozen=True, slots=True)
class LocalProfile:
    limits: tuple[LocalLimit, ...] = ()
    hysteresis_c: float = 0.0
    start_delay_s: float = 0.0

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> LocalProfile:
        """The subset of an alarm profile the edge evaluates; unknown keys are tolerated."""
        if not doc:
            return cls()
        limits = []
        for i, item in enumerate(doc.get("limits") or ()):
            if not isinstance(item, Mapping):
                raise ValidationError(f"limit {i} is not an object", field="limits")
            delay = item.get("single_event_delay_s")
            if delay is None:
                continue
            try:
                limits.append(
                    LocalLimit(
                        id=str(item.get("id", f"limit-{i}")),
                        side=str(item["side"]),
                        threshold_c=float(item["threshold_c"]),
                        delay_s=float(delay),
                        inclusive=bool(item.get("inclusive", True)),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValidationError(f"limit {i} is incomplete: {exc}", field="limits") from None
        return cls(
            limits=tuple(limits),
            hysteresis_c=float(doc.get("hysteresis_c") or 0.0),
            start_delay_s=float(doc.get("start_delay_s") or 0.0),
        )


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A limit raised or cleared on one device."""

    device_id: str
    limit_id: str
    side: str
    threshold_c: float
    raised: bool
    t_ms: int
    celsius: float


class AlarmOutput(Protocol):
    """Where an alarm shows: `changed` for every event, with whether any alarm is still active."""

    def changed(self, event: AlarmEvent, *, any_active: bool) -> None: ...


class ConsoleOutput:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def changed(self, event: AlarmEvent, *, any_active: bool) -> None:
        word = "ALARM" if event.raised else "cleared"
        stream = self.stream or sys.stderr
        print(
            f"{word}: {event.device_id} limit {event.limit_id} ({event.side} "
            f"{event.threshold_c:g} °C) at {event.celsius:.1f} °C",
            file=stream,
            flush=True,
        )


class GpioPin(Protocol):
    def set(self, on: bool) -> None: ...


class SysfsGpioPin:
    """A pin driven through /sys/class/gpio (exported on first use)."""

    def __init__(self, pin: int, *, root: Path = Path("/sys/class/gpio"), active_low: bool = False):
        self.pin = pin
        self.root = root
        self.active_low = active_low
        self._ready = False

    def _prepare(self) -> None:
        folder = self.root / f"gpio{self.pin}"
        if not folder.exists():
            (self.root / "export").write_text(str(self.pin))
        (folder / "direction").write_text("out")
        self._ready = True

    def set(self, on: bool) -> None:
        if not self._ready:
            self._prepare()
        level = on != self.active_low
        (self.root / f"gpio{self.pin}" / "value").write_text("1" if level else "0")


class GpiodPin:
    """A pin driven through libgpiod's Python binding (gpiod >= 2), when it is installed."""

    def __init__(self, pin: int, *, chip: str = "/dev/gpiochip0") -> None:
        import gpiod  # optional; not a dependency of the agent

        settings = gpiod.LineSettings(direction=gpiod.line.Direction.OUTPUT)
        self._request = gpiod.request_lines(
            chip, consumer="coldchain-gateway", config={pin: settings}
        )
        self.pin = pin
        self._gpiod = gpiod

    def set(self, on: bool) -> None:
        value = self._gpiod.line.Value.ACTIVE if on else self._gpiod.line.Value.INACTIVE
        self._request.set_value(self.pin, value)


class GpioOutput:
    """A buzzer or LED that is on while any alarm is active."""

    def __init__(self, pin: GpioPin) -> None:
        self.pin = pin

    def changed(self, event: AlarmEvent, *, any_active: bool) -> None:
        try:
            self.pin.set(any_active)
        except OSError as exc:
            log.warning("alarm output pin cannot be set: %s", exc)


@dataclass
class _LimitState:
    beyond_since_ms: int | None = None
    active: bool = False


@dataclass
class _DeviceState:
    first_ms: int | None = None
    limits: dict[str, _LimitState] = field(default_factory=dict)


class LocalAlarm:
    """Per-device limit states; `observe` feeds samples in time order and returns events."""

    def __init__(self, outputs: Sequence[AlarmOutput] = ()) -> None:
        self.outputs = list(outputs)
        self._profiles: dict[str, LocalProfile] = {}
        self._states: dict[str, _DeviceState] = {}

    def set_profile(self, device_id: str, profile: LocalProfile) -> None:
        self._profiles[device_id] = profile
        state = self._states.setdefault(device_id, _DeviceState())
        known = {limit.id for limit in profile.limits}
        for limit_id in list(state.limits):
            if limit_id not in known:
                del state.limits[limit_id]

    def active(self, device_id: str | None = None) -> list[str]:
        """Active limits as 'device:limit' (or just limit ids for one device)."""
        found = []
        for dev, state in self._states.items():
            if device_id is not None and dev != device_id:
                continue
            for limit_id, ls in state.limits.items():
                if ls.active:
                    found.append(limit_id if device_id else f"{dev}:{limit_id}")
        return sorted(found)

    def observe(self, sample: Sample) -> list[AlarmEvent]:
        profile = self._profiles.get(sample.device_id)
        if profile is None or not profile.limits:
            return []
        state = self._states.setdefault(sample.device_id, _DeviceState())
        if state.first_ms is None:
            state.first_ms = sample.t_ms
        if sample.t_ms - state.first_ms < profile.start_delay_s * 1000:
            return []
        events = []
        for limit in profile.limits:
            ls = state.limits.setdefault(limit.id, _LimitState())
            # Once raised, the alarm holds until the value is back by the hysteresis.
            beyond = limit.beyond(sample.celsius, profile.hysteresis_c if ls.active else 0.0)
            if beyond:
                if ls.beyond_since_ms is None:
                    ls.beyond_since_ms = sample.t_ms
                if not ls.active and sample.t_ms - ls.beyond_since_ms >= limit.delay_s * 1000:
                    ls.active = True
                    events.append(self._event(sample, limit, raised=True))
            else:
                ls.beyond_since_ms = None
                if ls.active:
                    ls.active = False
                    events.append(self._event(sample, limit, raised=False))
        if events:
            any_active = bool(self.active())
            for event in events:
                log.warning(
                    "local alarm %s: device %s limit %s at %.2f °C",
                    "raised" if event.raised else "cleared",
                    event.device_id,
                    event.limit_id,
                    event.celsius,
                )
                for output in self.outputs:
                    output.changed(event, any_active=any_active)
        return events

    @staticmethod
    def _event(sample: Sample, limit: LocalLimit, *, raised: bool) -> AlarmEvent:
        return AlarmEvent(
            device_id=sample.device_id,
            limit_id=limit.id,
            side=limit.side,
            threshold_c=limit.threshold_c,
            raised=raised,
            t_ms=sample.t_ms,
            celsius=sample.celsius,
        )
