"""Sensor drivers at the byte level: a fake sysfs tree, pyserial's loop:// port, a fake I2C bus."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from gateway_agent.drivers.crc import crc8_maxim, crc8_sensirion
from gateway_agent.drivers.i2c import (
    BME280Calibration,
    BME280Driver,
    SHT3xDriver,
    SHT4xDriver,
    bme280_compensate,
)
from gateway_agent.drivers.onewire import DS18B20Driver, list_sensors, parse_w1_slave
from gateway_agent.drivers.serial_line import LineFormat, SerialLineDriver, nmea_sentence
from gateway_agent.errors import DriverError, SensorCrcError

NOW = 1_795_515_300_000


def test_crc_reference_values() -> None:
    assert crc8_sensirion(b"\xbe\xef") == 0x92  # Sensirion datasheet example
    assert crc8_maxim(bytes.fromhex("72014b467fff0e10")) == 0x57  # a DS18B20 scratchpad
    assert crc8_maxim(bytes.fromhex("72014b467fff0e10") + b"\x57") == 0


# --------------------------------------------------------------------------- 1-Wire


def _scratchpad(raw_temp: int) -> bytes:
    body = raw_temp.to_bytes(2, "little", signed=True) + bytes.fromhex("4b467fff0e10")
    return body + bytes([crc8_maxim(body)])


def _w1_text(scratch: bytes, *, verdict: str = "YES", t: int = 0) -> str:
    hexes = " ".join(f"{b:02x}" for b in scratch)
    return f"{hexes} : crc={scratch[-1]:02x} {verdict}\n{hexes} t={t}\n"


def test_ds18b20_reads_a_fake_sysfs_tree(tmp_path: Path) -> None:
    sensor = tmp_path / "28-000005e2fdc3"
    sensor.mkdir()
    (tmp_path / "w1_bus_master1").mkdir()
    (sensor / "w1_slave").write_text(_w1_text(_scratchpad(0x0172), t=23125))
    assert list_sensors(tmp_path) == ["28-000005e2fdc3"]
    driver = DS18B20Driver(device_id="TRK-1", sensor="28-000005e2fdc3", root=tmp_path)
    [sample] = driver.read(NOW)
    assert sample.celsius == pytest.approx(23.125)
    assert (sample.device_id, sample.t_ms) == ("TRK-1", NOW)
    (sensor / "w1_slave").write_text(_w1_text(_scratchpad(-0x0090)))  # -9 °C, two's complement
    assert driver.read(NOW)[0].celsius == pytest.approx(-9.0)


def test_ds18b20_refuses_bad_crc_and_reset_value() -> None:
    good = _scratchpad(0x0050)
    with pytest.raises(SensorCrcError, match="kernel"):
        parse_w1_slave(_w1_text(good, verdict="NO"), sensor="28-x")
    flipped = bytes([good[0] ^ 0x01]) + good[1:]  # kernel says YES, our own CRC disagrees
    with pytest.raises(SensorCrcError, match="scratchpad CRC"):
        parse_w1_slave(_w1_text(flipped), sensor="28-x")
    with pytest.raises(DriverError, match="power-on"):
        parse_w1_slave(_w1_text(_scratchpad(0x0550)), sensor="28-x")
    with pytest.raises(DriverError, match="truncated"):
        parse_w1_slave("72 01", sensor="28-x")


def test_ds18b20_missing_file_is_a_driver_error(tmp_path: Path) -> None:
    driver = DS18B20Driver(device_id="TRK-1", sensor="28-000000000001", root=tmp_path)
    with pytest.raises(DriverError):
        driver.read(NOW)


# --------------------------------------------------------------------------- serial lines


def test_serial_csv_lines_over_a_pyserial_loop_port() -> None:
    driver = SerialLineDriver.open(
        device_id="USB-1", url="loop://", line_format=LineFormat(columns=("t", "c", "rh"))
    )
    try:
        driver.port.write(b"1795515240,4.6,61.2\n1795515300000,4.7,\nnot,a,number\n1795515360,4.")  # type: ignore[attr-defined]
        samples = driver.read(NOW)
        assert [(s.t_ms, s.celsius, s.rh) for s in samples] == [
            (1_795_515_240_000, 4.6, 61.2),
            (1_795_515_300_000, 4.7, None),
        ]
        assert driver.bad_lines == 1
        driver.port.write(b"9,60\n")  # the rest of a line that arrived in two reads
        [late] = driver.read(NOW + 60_000)
        assert (late.t_ms, late.celsius, late.rh) == (1_795_515_360_000, 4.9, 60.0)
    finally:
        driver.close()


def test_serial_nmea_sentences_with_checksum() -> None:
    fmt = LineFormat(kind="nmea", columns=("c", "rh"), talker="CCTMP")
    good = nmea_sentence("CCTMP", ["4.25", "70.5"])
    bad = good[:-2] + ("00" if good[-2:] != "00" else "01")
    driver = SerialLineDriver.open(device_id="USB-2", url="loop://", line_format=fmt)
    try:
        driver.port.write(f"{good}\r\n{bad}\r\n$GPGGA,1,2*00\r\n".encode())  # type: ignore[attr-defined]
        [sample] = driver.read(NOW)
        assert (sample.celsius, sample.rh, sample.t_ms) == (4.25, 70.5, NOW)
        assert driver.bad_lines == 2
    finally:
        driver.close()


def test_line_format_refuses_unknown_columns() -> None:
    from coldchain.errors import DecodeError

    with pytest.raises(DecodeError):
        LineFormat(columns=("t", "temp"))


# --------------------------------------------------------------------------- I2C


class FakeSMBus:
    """A fake I2C bus: answers smbus2 calls from per-address byte maps, records writes."""

    def __init__(self) -> None:
        self.reads: dict[int, bytes] = {}  # address -> bytes a raw read returns
        self.registers: dict[int, dict[int, int]] = {}
        self.writes: list[tuple[int, bytes]] = []
        self.closed = False

    def i2c_rdwr(self, *msgs: object) -> None:
        for msg in msgs:
            addr, flags, length = msg.addr, msg.flags, msg.len  # type: ignore[attr-defined]
            if flags & 1:  # I2C_M_RD
                payload = self.reads[addr][:length]
                ctypes.memmove(msg.buf, payload, len(payload))  # type: ignore[attr-defined]
            else:
                self.writes.append((addr, bytes(msg)))  # type: ignore[call-overload]

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        return self.registers[i2c_addr].get(register, 0)

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self.writes.append((i2c_addr, bytes([register, value])))

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        regs = self.registers[i2c_addr]
        return [regs.get(register + i, 0) for i in range(length)]

    def close(self) -> None:
        self.closed = True


def _sensirion_words(*words: int) -> bytes:
    out = b""
    for word in words:
        two = word.to_bytes(2, "big")
        out += two + bytes([crc8_sensirion(two)])
    return out


def test_sht3x_command_conversion_and_crc() -> None:
    bus = FakeSMBus()
    # T = -45 + 175 * raw / 65535 = 4.0 °C -> raw 18350; RH = 100 * raw / 65535 = 50 % -> 32768
    bus.reads[0x44] = _sensirion_words(18350, 32768)
    driver = SHT3xDriver(device_id="I2C-1", bus=bus, sleep=lambda s: None)
    [sample] = driver.read(NOW)
    assert bus.writes == [(0x44, b"\x24\x00")]
    assert sample.celsius == pytest.approx(4.0, abs=0.01)
    assert sample.rh == pytest.approx(50.0, abs=0.01)
    bus.reads[0x44] = _sensirion_words(18350, 32768)[:5] + b"\x00"  # corrupt the RH CRC
    with pytest.raises(SensorCrcError):
        driver.read(NOW)
    driver.close()
    assert bus.closed


def test_sht4x_humidity_is_clamped() -> None:
    bus = FakeSMBus()
    bus.reads[0x44] = _sensirion_words(0xFFFF, 0xFFFF)  # -6 + 125 = 119 % before clamping
    [sample] = SHT4xDriver(device_id="I2C-2", bus=bus, sleep=lambda s: None).read(NOW)
    assert bus.writes == [(0x44, b"\xfd")]
    assert sample.celsius == pytest.approx(130.0)
    assert sample.rh == 100.0


# BMP280/BME280 datasheet worked example (section 8.2 of BST-BMP280-DS001).
_T = (27504, 26435, -1000)
_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
_H = (75, 362, 0, 308, 50, 30)  # typical trimming values of a BME280


def _bme280_registers(adc_t: int, adc_p: int, adc_h: int) -> dict[int, int]:
    regs: dict[int, int] = {0xD0: 0x60, 0xF3: 0x00}
    block = b"".join(
        v.to_bytes(2, "little", signed=i not in (0, 3)) for i, v in enumerate(_T + _P)
    )
    for i, b in enumerate(block):
        regs[0x88 + i] = b
    h1, h2, h3, h4, h5, h6 = _H
    regs[0xA1] = h1
    regs[0xE1], regs[0xE2] = h2.to_bytes(2, "little", signed=True)
    regs[0xE3] = h3
    regs[0xE4] = (h4 >> 4) & 0xFF
    regs[0xE5] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)
    regs[0xE6] = (h5 >> 4) & 0xFF
    regs[0xE7] = h6 & 0xFF
    data = [
        adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4,
        adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4,
        adc_h >> 8, adc_h & 0xFF,
    ]
    for i, b in enumerate(data):
        regs[0xF7 + i] = b
    return regs


def _humidity_double(t_c: float, adc_h: int) -> float:
    """The datasheet's floating-point humidity formula, as an independent reference."""
    h1, h2, h3, h4, h5, h6 = _H
    t_fine = t_c * 5120.0
    var_h = t_fine - 76800.0
    var_h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * var_h)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * var_h * (1.0 + h3 / 67108864.0 * var_h))
    )
    var_h = var_h * (1.0 - h1 * var_h / 524288.0)
    return min(100.0, max(0.0, var_h))


def test_bme280_compensation_matches_the_datasheet_example() -> None:
    cal = BME280Calibration.from_registers(
        bytes(_bme280_registers(0, 0, 0).get(0x88 + i, 0) for i in range(26)),
        bytes(_bme280_registers(0, 0, 0).get(0xE1 + i, 0) for i in range(7)),
    )
    assert (cal.t1, cal.t2, cal.t3) == _T and cal.p == _P
    assert (cal.h1, cal.h2, cal.h3, cal.h4, cal.h5, cal.h6) == _H
    celsius, pascal, rh = bme280_compensate(cal, 519888, 415148, 30000)
    assert celsius == pytest.approx(25.08, abs=0.005)
    assert pascal == pytest.approx(100653.27, abs=1.0)
    assert rh == pytest.approx(_humidity_double(celsius, 30000), abs=0.1)


def test_bme280_driver_over_the_fake_bus() -> None:
    bus = FakeSMBus()
    bus.registers[0x76] = _bme280_registers(519888, 415148, 30000)
    driver = BME280Driver(device_id="I2C-3", bus=bus, sleep=lambda s: None)
    [sample] = driver.read(NOW)
    assert sample.celsius == pytest.approx(25.08, abs=0.005)
    assert sample.extras == {"hpa": pytest.approx(1006.53, abs=0.01)}
    assert (0x76, bytes([0xF4, 0x25])) in bus.writes  # forced mode, x1 oversampling
    bus.registers[0x76][0xD0] = 0x58  # a BMP280 has no humidity
    with pytest.raises(DriverError, match="not a BME280"):
        BME280Driver(device_id="I2C-3", bus=bus, sleep=lambda s: None).read(NOW)
