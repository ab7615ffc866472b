"""The one small protocol every sensor driver implements, and the sample it returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from coldchain.domain import validate_device_name
from coldchain.errors import ValidationError


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one logger on the gateway's clock; `rh` is None when not measured."""

    device_id: str
    t_ms: int
    celsius: float
    rh: float | None = None
    extras: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_device_name(self.device_id)
        if not math.isfinite(self.celsius) or not -273.15 <= self.celsius <= 1000:
            raise ValidationError(f"temperature {self.celsius!r} is not physical", field="c")
        if self.rh is not None and not (math.isfinite(self.rh) and 0.0 <= self.rh <= 100.0):
            raise ValidationError(f"humidity {self.rh!r} is outside 0-100 %", field="rh")


class Driver(Protocol):
    """A sensor (or a logger on a line) that yields samples for one device id.

    `read` is called once per sampling interval; a polled sensor returns one sample, a logger
    that pushes lines returns whatever arrived since the last call (possibly none). A sensor
    that cannot be read raises DriverError; the agent logs it and carries on with the others.
    """

    device_id: str

    def read(self, now_ms: int) -> list[Sample]: ...

    def close(self) -> None: ...
