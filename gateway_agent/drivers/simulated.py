"""A simulated sensor: the driver side of the simulator, fed by any object that models a load.

The simulator (firmware_sim) supplies the source; the agent only knows this protocol, so the
agent never depends on the simulator.
"""

from __future__ import annotations

from typing import Protocol

from gateway_agent.drivers.base import Sample


class SampleSource(Protocol):
    """Something that knows the temperature (and maybe humidity) of a load at a time."""

    def sample(self, t_ms: int) -> tuple[float, float | None]: ...


class ConstantSource:
    """A load that stays at one temperature; handy for a dry run of an installation."""

    def __init__(self, celsius: float = 5.0, rh: float | None = None) -> None:
        self.celsius = celsius
        self.rh = rh

    def sample(self, t_ms: int) -> tuple[float, float | None]:
        return self.celsius, self.rh


class SimulatedDriver:
    def __init__(self, *, device_id: str, source: SampleSource) -> None:
        self.device_id = device_id
        self.source = source

    def read(self, now_ms: int) -> list[Sample]:
        celsius, rh = self.source.sample(now_ms)
        return [Sample(self.device_id, now_ms, celsius, rh)]

    def close(self) -> None:
        pass
