"""I2C sensors through smbus2: Sensirion SHT3x/SHT4x (CRC-8 on every word) and Bosch BME280.

Only a handful of smbus2 calls are used (`i2c_rdwr` with `i2c_msg`, `read_byte_data`,
`write_byte_data`, `read_i2c_block_data`), so a fake bus implementing them can stand in for the
hardware in tests. Conversions follow the datasheets: SHT3x (Sensirion, 2019) section 4.13,
SHT4x (2021) section 4.6, BME280 (Bosch BST-BME280-DS002) section 4.2.3 (integer formulas).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway_agent.drivers.base import Sample
from gateway_agent.drivers.crc import crc8_sensirion
from gateway_agent.errors import DriverError, SensorCrcError


class I2CBus(Protocol):
    """The subset of smbus2.SMBus the drivers call."""

    def i2c_rdwr(self, *msgs: Any) -> None: ...

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def close(self) -> None: ...


def open_bus(number: int) -> I2CBus:
    """The kernel's /dev/i2c-N through smbus2."""
    from smbus2 import SMBus

    try:
        bus: I2CBus = SMBus(number)
        return bus
    except OSError as exc:
        raise DriverError(f"cannot open /dev/i2c-{number}: {exc}", sensor=f"i2c-{number}") from None


def _write(bus: I2CBus, addr: int, payload: bytes) -> None:
    from smbus2 import i2c_msg

    bus.i2c_rdwr(i2c_msg.write(addr, list(payload)))


def _read(bus: I2CBus, addr: int, length: int) -> bytes:
    from smbus2 import i2c_msg

    msg = i2c_msg.read(addr, length)
    bus.i2c_rdwr(msg)
    return bytes(msg)


def check_sensirion_words(raw: bytes, *, sensor: str) -> list[int]:
    """Split [msb, lsb, crc] triplets into 16-bit words, checking every CRC."""
    if len(raw) % 3:
        raise DriverError(f"{sensor}: expected whole [msb, lsb, crc] triplets", sensor=sensor)
    words = []
    for i in range(0, len(raw), 3):
        if crc8_sensirion(raw[i : i + 2]) != raw[i + 2]:
            raise SensorCrcError(f"{sensor}: CRC mismatch in word {i // 3}", sensor=sensor)
        words.append(int.from_bytes(raw[i : i + 2], "big"))
    return words


class _I2CDriver:
    """What every I2C sensor driver shares: its bus, address, a sleep to wait for conversions."""

    default_address: int = 0
    sensor_name: str = ""

    def __init__(
        self,
        *,
        device_id: str,
        bus: I2CBus,
        address: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.device_id = device_id
        self.bus = bus
        self.address = self.default_address if address is None else address
        self._sleep = sleep
        self.sensor = f"{self.sensor_name or type(self).__name__}@{self.address:#04x}"

    def close(self) -> None:
        self.bus.close()


class _SensirionDriver(_I2CDriver):
    default_address = 0x44
    command: bytes = b""
    wait_s: float = 0.0

    def measure(self) -> tuple[float, float]:
        try:
            _write(self.bus, self.address, self.command)
            self._sleep(self.wait_s)
            raw = _read(self.bus, self.address, 6)
        except OSError as exc:
            raise DriverError(f"{self.sensor}: bus error {exc}", sensor=self.sensor) from None
        t_raw, rh_raw = check_sensirion_words(raw, sensor=self.sensor)
        return self.convert(t_raw, rh_raw)

    def convert(self, t_raw: int, rh_raw: int) -> tuple[float, float]:
        raise NotImplementedError

    def read(self, now_ms: int) -> list[Sample]:
        celsius, rh = self.measure()
        return [Sample(self.device_id, now_ms, round(celsius, 3), round(rh, 2))]


class SHT3xDriver(_SensirionDriver):
    """SHT30/31/35: single shot, high repeatability, no clock stretching (0x2400)."""

    command = b"\x24\x00"
    wait_s = 0.016

    def convert(self, t_raw: int, rh_raw: int) -> tuple[float, float]:
        return -45.0 + 175.0 * t_raw / 65535.0, 100.0 * rh_raw / 65535.0


class SHT4xDriver(_SensirionDriver):
    """SHT40/41/45: measure with high precision (0xFD)."""

    command = b"\xfd"
    wait_s = 0.01

    def convert(self, t_raw: int, rh_raw: int) -> tuple[float, float]:
        rh = -6.0 + 125.0 * rh_raw / 65535.0
        return -45.0 + 175.0 * t_raw / 65535.0, min(100.0, max(0.0, rh))


# --------------------------------------------------------------------------- BME280

BME280_CHIP_ID = 0x60
_REG_ID = 0xD0
_REG_CTRL_HUM = 0xF2
_REG_STATUS = 0xF3
_REG_CTRL_MEAS = 0xF4
_REG_DATA = 0xF7


@dataclass(frozen=True, slots=True)
class BME280Calibration:
    """The trimming parameters burnt into each chip (registers 0x88-0xA1 and 0xE1-0xE7)."""

    t1: int
    t2: int
    t3: int
    p: tuple[int, ...]  # dig_P1..dig_P9
    h1: int
    h2: int
    h3: int
    h4: int
    h5: int
    h6: int

    @classmethod
    def from_registers(cls, block1: bytes, block2: bytes) -> BME280Calibration:
        """block1: 26 bytes from 0x88 (0xA1 is its last); block2: 7 bytes from 0xE1."""

        def u16(b: bytes, i: int) -> int:
            return int.from_bytes(b[i : i + 2], "little")

        def s16(b: bytes, i: int) -> int:
            return int.from_bytes(b[i : i + 2], "little", signed=True)

        h4 = (block2[3] << 4) | (block2[4] & 0x0F)
        h5 = (block2[5] << 4) | (block2[4] >> 4)
        return cls(
            t1=u16(block1, 0),
            t2=s16(block1, 2),
            t3=s16(block1, 4),
            p=(u16(block1, 6), *(s16(block1, 8 + 2 * i) for i in range(8))),
            h1=block1[25],
            h2=s16(block2, 0),
            h3=block2[2],
            h4=h4 - 4096 if h4 & 0x800 else h4,
            h5=h5 - 4096 if h5 & 0x800 else h5,
            h6=block2[6] - 256 if block2[6] & 0x80 else block2[6],
        )


def bme280_compensate(
    cal: BME280Calibration, adc_t: int, adc_p: int, adc_h: int
) -> tuple[float, float, float]:
    """(°C, Pa, %RH) from raw ADC values with the datasheet's integer formulas."""
    var1 = (((adc_t >> 3) - (cal.t1 << 1)) * cal.t2) >> 11
    var2 = (((((adc_t >> 4) - cal.t1) * ((adc_t >> 4) - cal.t1)) >> 12) * cal.t3) >> 14
    t_fine = var1 + var2
    temperature = ((t_fine * 5 + 128) >> 8) / 100.0

    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal.p
    v1 = t_fine - 128000
    v2 = v1 * v1 * p6
    v2 = v2 + ((v1 * p5) << 17)
    v2 = v2 + (p4 << 35)
    v1 = ((v1 * v1 * p3) >> 8) + ((v1 * p2) << 12)
    v1 = (((1 << 47) + v1) * p1) >> 33
    if v1 == 0:
        pressure = 0.0
    else:
        pp = 1048576 - adc_p
        pp = (((pp << 31) - v2) * 3125) // v1
        v1 = (p9 * (pp >> 13) * (pp >> 13)) >> 25
        v2 = (p8 * pp) >> 19
        pp = ((pp + v1 + v2) >> 8) + (p7 << 4)
        pressure = pp / 256.0

    h = t_fine - 76800
    h = (
        (((adc_h << 14) - (cal.h4 << 20) - (cal.h5 * h)) + 16384) >> 15
    ) * (
        (
            (
                (((h * cal.h6) >> 10) * (((h * cal.h3) >> 11) + 32768)) >> 10
            )
            + 2097152
        )
        * cal.h2
        + 8192
        >> 14
    )
    h = h - (((((h >> 15) * (h >> 15)) >> 7) * cal.h1) >> 4)
    h = max(0, min(h, 419430400))
    humidity = (h >> 12) / 1024.0
    return temperature, pressure, humidity


class BME280Driver(_I2CDriver):
    """Forced mode, x1 oversampling for temperature, pressure and humidity."""

    default_address = 0x76
    sensor_name = "BME280"

    def __init__(
        self,
        *,
        device_id: str,
        bus: I2CBus,
        address: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(device_id=device_id, bus=bus, address=address, sleep=sleep)
        self._cal: BME280Calibration | None = None

    def _calibration(self) -> BME280Calibration:
        if self._cal is None:
            chip = self.bus.read_byte_data(self.address, _REG_ID)
            if chip != BME280_CHIP_ID:
                raise DriverError(
                    f"{self.sensor}: chip id {chip:#04x} is not a BME280", sensor=self.sensor
                )
            block1 = bytes(self.bus.read_i2c_block_data(self.address, 0x88, 26))
            block2 = bytes(self.bus.read_i2c_block_data(self.address, 0xE1, 7))
            self._cal = BME280Calibration.from_registers(block1, block2)
        return self._cal

    def measure(self) -> tuple[float, float, float]:
        try:
            cal = self._calibration()
            self.bus.write_byte_data(self.address, _REG_CTRL_HUM, 0x01)
            self.bus.write_byte_data(self.address, _REG_CTRL_MEAS, 0x25)  # x1, x1, forced
            for _ in range(20):
                self._sleep(0.005)
                if not self.bus.read_byte_data(self.address, _REG_STATUS) & 0x08:
                    break
            else:
                raise DriverError(f"{self.sensor}: measurement never finished", sensor=self.sensor)
            raw = bytes(self.bus.read_i2c_block_data(self.address, _REG_DATA, 8))
        except OSError as exc:
            raise DriverError(f"{self.sensor}: bus error {exc}", sensor=self.sensor) from None
        adc_p = (raw[0] << 12) | (raw[1] << 4) | (raw[2] >> 4)
        adc_t = (raw[3] << 12) | (raw[4] << 4) | (raw[5] >> 4)
        adc_h = (raw[6] << 8) | raw[7]
        if adc_t == 0x80000:
            raise DriverError(f"{self.sensor}: temperature is switched off", sensor=self.sensor)
        return bme280_compensate(cal, adc_t, adc_p, adc_h)

    def read(self, now_ms: int) -> list[Sample]:
        celsius, pascal, rh = self.measure()
        extras = {"hpa": round(pascal / 100.0, 2)} if pascal else None
        return [Sample(self.device_id, now_ms, celsius, round(rh, 2), extras)]
