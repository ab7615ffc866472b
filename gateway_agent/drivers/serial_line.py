"""USB-serial loggers that print one line per reading, in a configurable line format.

Two formats:
    csv    delimiter-separated columns named by `columns`: "c" (°C, required), "rh" (%),
           "t" (epoch seconds, epoch milliseconds or RFC 3339), "_" (ignored). Without a "t"
           column a reading is stamped with the gateway clock when it is read.
    nmea   NMEA-0183 style sentences ``$<talker>,<field>,<field>...*HH`` where HH is the XOR of
           every character between '$' and '*'; `columns` names the fields as above. A sentence
           with a wrong checksum is counted and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from coldchain.errors import DecodeError, ValidationError
from coldchain.wire import parse_time_ms
from gateway_agent.drivers.base import Sample
from gateway_agent.errors import DriverError

log = logging.getLogger(__name__)

_COLUMNS = frozenset({"c", "rh", "t", "_"})
_MAX_LINE = 512


class LinePort(Protocol):
    """The few pyserial methods the driver uses."""

    def read(self, size: int = 1) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LineFormat:
    kind: str = "csv"
    columns: tuple[str, ...] = ("t", "c", "rh")
    delimiter: str = ","
    talker: str = "CCTMP"  # nmea: the sentence's name after '$'

    def __post_init__(self) -> None:
        if self.kind not in ("csv", "nmea"):
            raise DecodeError("line format must be 'csv' or 'nmea'", reason="bad_config")
        object.__setattr__(self, "columns", tuple(self.columns))
        if "c" not in self.columns or not set(self.columns) <= _COLUMNS:
            raise DecodeError(
                "columns must include 'c' and use only c, rh, t, _", reason="bad_config"
            )

    def parse(self, line: str, *, device_id: str, now_ms: int) -> Sample:
        """One line to a sample; DecodeError says why a line is refused."""
        line = line.strip()
        nmea = self.kind == "nmea"
        fields = _nmea_fields(line, self.talker) if nmea else line.split(self.delimiter)
        if len(fields) != len(self.columns):
            raise DecodeError(
                f"expected {len(self.columns)} fields, got {len(fields)}", reason="bad_line"
            )
        named = {name: value.strip() for name, value in zip(self.columns, fields, strict=True)}
        t_ms = now_ms
        if "t" in named:
            t_ms = _line_time(named["t"])
        try:
            celsius = float(named["c"])
            rh = float(named["rh"]) if named.get("rh") else None
        except ValueError:
            raise DecodeError("a value is not a number", reason="bad_value") from None
        return Sample(device_id, t_ms, celsius, rh)


def nmea_checksum(body: str) -> str:
    value = 0
    for ch in body.encode("ascii"):
        value ^= ch
    return f"{value:02X}"


def nmea_sentence(talker: str, fields: list[str]) -> str:
    """A sentence with its checksum, as a logger would print it (used by tests and docs)."""
    body = ",".join([talker, *fields])
    return f"${body}*{nmea_checksum(body)}"


def _nmea_fields(line: str, talker: str) -> list[str]:
    if not line.startswith("$") or len(line) < 4 or line[-3] != "*":
        raise DecodeError("not an NMEA-style sentence", reason="bad_line")
    body, given = line[1:-3], line[-2:].upper()
    if nmea_checksum(body) != given:
        raise DecodeError("sentence checksum does not match", reason="bad_checksum")
    name, _, rest = body.partition(",")
    if name != talker:
        raise DecodeError(f"unexpected sentence {name!r}", reason="bad_line")
    return rest.split(",")


def _line_time(text: str) -> int:
    try:
        number = float(text)
    except ValueError:
        return parse_time_ms(text)
    # Epoch seconds until 2286 are below 1e10; anything larger is milliseconds.
    return int(number * 1000) if number < 1e10 else int(number)


class SerialLineDriver:
    """Reads whatever lines arrived since the last call (non-blocking) and parses each."""

    def __init__(self, *, device_id: str, port: LinePort, line_format: LineFormat) -> None:
        self.device_id = device_id
        self.port = port
        self.line_format = line_format
        self.bad_lines = 0
        self._pending = b""

    @classmethod
    def open(
        cls, *, device_id: str, url: str, baudrate: int = 9600, line_format: LineFormat
    ) -> SerialLineDriver:
        """Open a port by device path or pyserial URL (e.g. /dev/ttyUSB0, loop://)."""
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError) as exc:
            raise DriverError(f"cannot open {url}: {exc}", sensor=url) from None
        return cls(device_id=device_id, port=port, line_format=line_format)

    def read(self, now_ms: int) -> list[Sample]:
        try:
            while True:
                chunk = self.port.read(4096)
                if not chunk:
                    break
                self._pending += chunk
        except OSError as exc:
            raise DriverError(f"serial read failed: {exc}", sensor=self.device_id) from None
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > _MAX_LINE:  # a line that never ends is noise
            self.bad_lines += 1
            self._pending = b""
        samples: list[Sample] = []
        for raw in lines:
            text = raw.decode("ascii", errors="replace").strip()
            if not text:
                continue
            try:
                samples.append(self.line_format.parse(text, device_id=self.device_id, now_ms=now_ms))
            except DecodeError as exc:
                self.bad_lines += 1
                log.warning("device %s: line refused (%s)", self.device_id, exc.reason)
            except ValidationError as exc:  # a sample outside physical ranges
                self.bad_lines += 1
                log.warning("device %s: line refused (%s)", self.device_id, exc)
        return samples

    def close(self) -> None:
        self.port.close()
