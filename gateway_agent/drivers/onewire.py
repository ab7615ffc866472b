"""DS18B20 temperature sensors on the 1-Wire bus, read through the kernel's sysfs `w1_slave` files.

The file holds two lines, e.g.::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

The kernel's verdict (YES) is required and the 9 scratchpad bytes are checked again with our own
CRC-8, so a flipped bit on a long cable never becomes a reading.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway_agent.drivers.base import Sample
from gateway_agent.drivers.crc import crc8_maxim
from gateway_agent.errors import DriverError, SensorCrcError

W1_DEVICES = Path("/sys/bus/w1/devices")
_SENSOR_RE = re.compile(r"^(10|22|28|3b|42)-[0-9a-f]{12}$")
_POWER_ON_RESET_RAW = 0x0550  # 85 °C: what the chip reports before its first conversion


def list_sensors(root: Path = W1_DEVICES) -> list[str]:
    """The 1-Wire temperature sensors the kernel sees (family 28 is the DS18B20)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _SENSOR_RE.match(p.name))


def parse_w1_slave(text: str, *, sensor: str) -> float:
    """Temperature in °C from a w1_slave file's text; DriverError/SensorCrcError when not sound."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        raise DriverError(f"{sensor}: w1_slave is truncated", sensor=sensor)
    head, _, verdict = lines[0].partition(": crc=")
    try:
        scratch = bytes.fromhex(head)
    except ValueError:
        raise DriverError(f"{sensor}: w1_slave bytes are not hex", sensor=sensor) from None
    if len(scratch) != 9:
        raise DriverError(f"{sensor}: expected 9 scratchpad bytes", sensor=sensor)
    if not verdict.strip().endswith("YES"):
        raise SensorCrcError(f"{sensor}: the kernel reports a CRC error", sensor=sensor)
    if crc8_maxim(scratch[:8]) != scratch[8]:
        raise SensorCrcError(f"{sensor}: scratchpad CRC does not match", sensor=sensor)
    if scratch == b"\xff" * 9 or scratch == b"\x00" * 9:
        raise DriverError(f"{sensor}: sensor does not answer", sensor=sensor)
    raw = int.from_bytes(scratch[0:2], "little", signed=True)
    if raw == _POWER_ON_RESET_RAW:
        raise DriverError(f"{sensor}: power-on reset value (85 °C), no conversion", sensor=sensor)
    if sensor.startswith("10-"):  # DS18S20: 0.5 °C steps
        return raw / 2.0
    return raw / 16.0


class DS18B20Driver:
    def __init__(self, *, device_id: str, sensor: str, root: Path = W1_DEVICES) -> None:
        self.device_id = device_id
        self.sensor = sensor
        self.path = root / sensor / "w1_slave"

    def read(self, now_ms: int) -> list[Sample]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise DriverError(f"{self.sensor}: cannot read {self.path}: {exc}", sensor=self.sensor) from None
        return [Sample(self.device_id, now_ms, parse_w1_slave(text, sensor=self.sensor))]

    def close(self) -> None:
        pass
