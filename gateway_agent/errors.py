"""The agent's exceptions, rooted in coldchain.errors.ColdchainError.

    ColdchainError
    └── GatewayError              anything the edge agent raises on purpose
        ├── DriverError           a sensor that cannot be read (missing, unplugged, bad bytes)
        │   └── SensorCrcError    bytes that fail their CRC: never turned into a reading
        ├── OutboxError           the outbox database cannot be used
        └── PublishRefusedError   the broker answered PUBACK with a failure reason code
"""

from __future__ import annotations

from coldchain.errors import ColdchainError


class GatewayError(ColdchainError):
    """Root of the edge agent's errors."""


class DriverError(GatewayError):
    """A sensor that cannot be read; `sensor` names it."""

    def __init__(self, message: str, *, sensor: str) -> None:
        super().__init__(message)
        self.sensor = sensor


class SensorCrcError(DriverError):
    """Bytes from a sensor that fail their CRC check."""


class OutboxError(GatewayError):
    """The outbox database cannot be used (corrupt, unwritable, wrong schema)."""


class PublishRefusedError(GatewayError):
    """The broker refused a publish (e.g. reason code 0x87, not authorized)."""

    def __init__(self, message: str, *, topic: str, reason_code: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason_code = reason_code
