"""Sensor drivers behind one protocol (`Driver`), and the factory that builds them from settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway_agent.drivers.base import Driver, Sample
from gateway_agent.drivers.simulated import ConstantSource, SampleSource, SimulatedDriver

if TYPE_CHECKING:
    from gateway_agent.config import DeviceSettings

__all__ = ["Driver", "Sample", "SampleSource", "SimulatedDriver", "build_driver"]


def build_driver(device: DeviceSettings, *, source: SampleSource | None = None) -> Driver:
    """The driver a device's settings name; `source` feeds a simulated driver."""
    opts = device.options
    if device.driver == "simulated":
        return SimulatedDriver(
            device_id=device.id,
            source=source or ConstantSource(float(opts.get("celsius", 5.0)), opts.get("rh")),
        )
    if device.driver == "serial":
        from gateway_agent.drivers.serial_line import LineFormat, SerialLineDriver

        line_format = LineFormat(
            kind=str(opts.get("format", "csv")),
            columns=tuple(opts.get("columns", ("t", "c", "rh"))),
            delimiter=str(opts.get("delimiter", ",")),
            talker=str(opts.get("talker", "CCTMP")),
        )
        return SerialLineDriver.open(
            device_id=device.id,
            url=str(opts["port"]),
            baudrate=int(opts.get("baudrate", 9600)),
            line_format=line_format,
        )
    if device.driver == "ds18b20":
        from gateway_agent.drivers.onewire import W1_DEVICES, DS18B20Driver

        return DS18B20Driver(
            device_id=device.id,
            sensor=str(opts["sensor"]),
            root=Path(opts.get("w1_root", W1_DEVICES)),
        )
    from gateway_agent.drivers.i2c import BME280Driver, SHT3xDriver, SHT4xDriver, open_bus

    bus = open_bus(int(opts.get("bus", 1)))
    address = int(opts["address"]) if "address" in opts else None  # else the chip's default
    drivers: dict[str, type[BME280Driver | SHT3xDriver | SHT4xDriver]] = {
        "bme280": BME280Driver,
        "sht3x": SHT3xDriver,
    }
    cls = drivers.get(device.driver, SHT4xDriver)
    return cls(device_id=device.id, bus=bus, address=address)
