"""The MQTT contract: topic scheme and the reading-batch codec (JSON and binary), status and config.

Binary batch, version 1, little-endian (docs/wire-format.md has a worked example)::

    offset  size   field
    0       3      magic b"CCB"
    3       1      version (1)
    4       1      flags: bit 0 = humidity column present, bit 1 = extras block present
    5       1      L = length of the device id
    6       L      device id, ASCII
    6+L     8      seq, uint64
    14+L    8      sent, int64 epoch milliseconds (device clock)
    22+L    4      n = number of readings, uint32
    26+L    8n     t, int64 epoch milliseconds (device clock)
    ...     4n     temperature, float32 °C
    ...     4n     relative humidity, float32 % (only with flag bit 0; NaN = not measured)
    ...     4+E    extras: uint32 E then E bytes of a JSON array, one object or null per reading

Extras carry the per-reading fields beyond temperature and humidity, in both forms the same keys:
`door` and `light` (true when open / lit), `lat` and `lon` (WGS 84 degrees, together), `shock_g`
(peak shock since the last reading, g). Older agents that send none of them are unaffected.

Two encoders write each form from one definition of it: `encode_binary`/`encode_json` take a
ReadingBatch (numpy columns, the server side), `encode_binary_columns`/`encode_json_columns` take
plain sequences (the edge agent, which never imports numpy). numpy is imported only inside the
functions that use it.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from coldchain.domain import DEVICE_NAME_RE, ReadingBatch, validate_device_name
from coldchain.errors import DecodeError, ValidationError

FORMAT_VERSION: Final = 1
BINARY_MAGIC: Final = b"CCB"
MAX_PAYLOAD_BYTES: Final = 1 << 20
MAX_READINGS: Final = 20_000
_EXTRA_KEYS_MAX: Final = 16

_HEAD = struct.Struct("<3sBBB")
_NUMBERS = struct.Struct("<QqI")
_FLAG_RH: Final = 1
_FLAG_EXTRAS: Final = 2
_BIG_ENDIAN_HOST: Final = sys.byteorder == "big"

Extras = Sequence[dict[str, Any] | None]

# --------------------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic scheme, with an optional prefix so tests and tenants can share one broker."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise ValidationError("a topic prefix must end with '/'", field="prefix")
        if any(c in self.prefix for c in "+#"):
            raise ValidationError("a topic prefix must not hold wildcards", field="prefix")

    @property
    def root(self) -> str:
        return f"{self.prefix}coldchain/v1"

    def readings(self, device_id: str) -> str:
        return f"{self.root}/{validate_device_name(device_id)}/readings"

    def status(self, device_id: str) -> str:
        return f"{self.root}/{validate_device_name(device_id)}/status"

    def config(self, device_id: str) -> str:
        return f"{self.root}/{validate_device_name(device_id)}/config"

    @property
    def all_readings(self) -> str:
        return f"{self.root}/+/readings"

    @property
    def all_status(self) -> str:
        return f"{self.root}/+/status"

    def shared_readings(self, group: str = "ingest") -> str:
        """The shared subscription that spreads readings over every ingest worker of `group`."""
        return f"$share/{group}/{self.all_readings}"

    def device_of(self, topic: str) -> str | None:
        """The device id in a topic of this scheme, or None when the topic is not ours."""
        root = self.root + "/"
        if not topic.startswith(root):
            return None
        parts = topic[len(root) :].split("/")
        if len(parts) != 2:
            return None
        return parts[0] if DEVICE_NAME_RE.match(parts[0]) else None


# --------------------------------------------------------------------------- time

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_time_ms(value: object, *, field: str = "t") -> int:
    """RFC 3339 with an offset, or integer epoch milliseconds, to epoch milliseconds."""
    if isinstance(value, bool):
        raise DecodeError(f"{field} must be a time, not a boolean", reason="bad_time", field=field)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError(
                f"{field} {value[:40]!r} is not RFC 3339", reason="bad_time", field=field
            ) from None
        if parsed.tzinfo is None:
            raise DecodeError(f"{field} {value[:40]!r} has no UTC offset", reason="bad_time", field=field)
        return (parsed - _EPOCH) // _MS  # exact: a float timestamp turns .001 s into 0.999 ms
    raise DecodeError(f"{field} must be RFC 3339 text or epoch ms", reason="bad_time", field=field)


def format_time_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC text with a 'Z'."""
    text = (_EPOCH + ms * _MS).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# --------------------------------------------------------------------------- batches


def decode_batch(payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> ReadingBatch:
    """Decode a reading batch in either form; every failure is a DecodeError with a reason."""
    if len(payload) > max_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {max_bytes}", reason="oversize")
    if payload[:3] == BINARY_MAGIC:
        return decode_binary(payload)
    if payload[:1] in (b"{", b"[", b" ", b"\n", b"\t", b"\r"):
        return decode_json(payload)
    raise DecodeError("payload is neither a JSON object nor a binary batch", reason="bad_format")


def encode_json(batch: ReadingBatch) -> bytes:
    """The JSON form; times as epoch ms (the compact choice docs/contract.md allows)."""
    import numpy as np

    return _json_payload(
        version=batch.version,
        device=batch.device,
        seq=batch.seq,
        sent_ms=batch.sent_ms,
        t_ms=np.asarray(batch.t_ms).tolist(),
        celsius=np.asarray(batch.celsius).tolist(),
        rh=np.asarray(batch.rh).tolist(),
        extras=batch.extras,
    )


def encode_json_columns(
    *,
    device: str,
    seq: int,
    sent_ms: int,
    t_ms: Sequence[int],
    celsius: Sequence[float],
    rh: Sequence[float] | None = None,
    extras: Extras | None = None,
) -> bytes:
    """`encode_json` for plain columns (no numpy): the same bytes for the same readings.

    `rh` None means no humidity column; NaN in it marks a reading without humidity.
    """
    n = _check_columns(t_ms, celsius, rh, extras)
    return _json_payload(
        version=FORMAT_VERSION,
        device=device,
        seq=seq,
        sent_ms=sent_ms,
        t_ms=t_ms,
        celsius=celsius,
        rh=rh if rh is not None else [math.nan] * n,
        extras=extras,
    )


def _json_payload(
    *,
    version: int,
    device: str,
    seq: int,
    sent_ms: int,
    t_ms: Sequence[Any],
    celsius: Sequence[Any],
    rh: Sequence[Any],
    extras: Extras | None,
) -> bytes:
    readings: list[dict[str, Any]] = []
    for i, (t, c, h) in enumerate(zip(t_ms, celsius, rh, strict=True)):
        item: dict[str, Any] = {"t": int(t), "c": float(c)}
        h = float(h)
        if not math.isnan(h):
            item["rh"] = h
        if extras is not None and extras[i]:
            item.update(extras[i] or {})
        readings.append(item)
    doc = {
        "v": version,
        "device": device,
        "seq": seq,
        "sent": format_time_ms(sent_ms),
        "readings": readings,
    }
    return orjson.dumps(doc)


def _check_columns(
    t_ms: Sequence[int], celsius: Sequence[float], rh: Sequence[float] | None, extras: Extras | None
) -> int:
    n = len(t_ms)
    if len(celsius) != n or (rh is not None and len(rh) != n):
        raise ValidationError("reading columns differ in length", field="readings")
    if extras is not None and len(extras) != n:
        raise ValidationError("extras differ in length from readings", field="readings")
    return n


def decode_json(payload: bytes) -> ReadingBatch:
    """Decode the JSON form of docs/contract.md."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}", reason="bad_json") from None
    if not isinstance(doc, dict):
        raise DecodeError("a batch must be a JSON object", reason="bad_json")
    version = doc.get("v")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise DecodeError(f"unsupported format version {version!r}", reason="bad_version", field="v")
    device = doc.get("device")
    if not isinstance(device, str):
        raise DecodeError("device must be a string", reason="bad_device", field="device")
    try:
        validate_device_name(device)
    except ValidationError as exc:
        raise DecodeError(str(exc), reason="bad_device", field="device") from None
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1 << 63:
        raise DecodeError("seq must be a non-negative integer", reason="bad_seq", field="seq")
    sent_ms = parse_time_ms(doc.get("sent"), field="sent")
    readings = doc.get("readings")
    if not isinstance(readings, list):
        raise DecodeError("readings must be a list", reason="bad_readings", field="readings")
    if len(readings) > MAX_READINGS:
        raise DecodeError(f"more than {MAX_READINGS} readings", reason="oversize")
    import numpy as np

    n = len(readings)
    t = np.empty(n, dtype=np.int64)
    c = np.empty(n, dtype=np.float64)
    rh = np.full(n, np.nan, dtype=np.float64)
    extras: list[dict[str, Any] | None] = [None] * n
    any_extra = False
    for i, item in enumerate(readings):
        if not isinstance(item, dict):
            raise DecodeError(f"reading {i} is not an object", reason="bad_readings")
        t[i] = _reading_time(item.get("t"), i)
        c[i] = _number(item.get("c"), i, "c")
        h = item.get("rh")
        if h is not None:
            rh[i] = _number(h, i, "rh")
        if len(item) > 2 + (h is not None):
            extra = {k: v for k, v in item.items() if k not in ("t", "c", "rh")}
            if len(extra) > _EXTRA_KEYS_MAX or not all(
                isinstance(v, (int, float, str, bool)) or v is None for v in extra.values()
            ):
                raise DecodeError(
                    f"reading {i} has too many or non-scalar extra fields", reason="bad_readings"
                )
            if extra:
                extras[i] = extra
                any_extra = True
    if any_extra:
        check_sensor_fields(extras)
    return ReadingBatch(
        device=device,
        seq=seq,
        sent_ms=sent_ms,
        t_ms=t,
        celsius=c,
        rh=rh,
        extras=tuple(extras) if any_extra else None,
        version=version,
    )


# Per-reading fields the platform reads (beyond these, extras are kept as they come):
# door / light open (true), position in WGS 84 degrees (lat and lon together), shock in g.
SENSOR_RANGES: Final = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "shock_g": (0.0, 1000.0)}


def check_sensor_fields(extras: Extras) -> None:
    """Refuse a reading whose position or shock is not a number in range, or half a position."""
    for i, extra in enumerate(extras):
        if not extra:
            continue
        for name, (lo, hi) in SENSOR_RANGES.items():
            value = extra.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise DecodeError(
                    f"reading {i} field {name!r} must be a number within {lo:g}..{hi:g}",
                    reason="bad_value", field=name,
                )
        if (extra.get("lat") is None) != (extra.get("lon") is None):
            raise DecodeError(
                f"reading {i} has lat or lon without the other", reason="bad_value", field="lat"
            )


def _reading_time(value: object, i: int) -> int:
    ms = parse_time_ms(value, field=f"readings[{i}].t")
    if not -(1 << 62) < ms < 1 << 62:
        raise DecodeError(f"reading {i} time is out of range", reason="bad_time")
    return ms


def _number(value: object, i: int, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(f"reading {i} field {name!r} must be a number", reason="bad_value", field=name)
    return float(value)


def encode_binary(batch: ReadingBatch) -> bytes:
    """The compact binary form (about 16 bytes a reading)."""
    import numpy as np

    n = len(batch)
    has_rh = bool(n) and not bool(np.isnan(batch.rh).all())
    return _binary_payload(
        device=batch.device,
        seq=batch.seq,
        sent_ms=batch.sent_ms,
        n=n,
        t_bytes=np.ascontiguousarray(batch.t_ms, dtype="<i8").tobytes(),
        c_bytes=np.ascontiguousarray(batch.celsius, dtype="<f4").tobytes(),
        rh_bytes=np.ascontiguousarray(batch.rh, dtype="<f4").tobytes() if has_rh else None,
        extras=batch.extras,
    )


def encode_binary_columns(
    *,
    device: str,
    seq: int,
    sent_ms: int,
    t_ms: Sequence[int],
    celsius: Sequence[float],
    rh: Sequence[float] | None = None,
    extras: Extras | None = None,
) -> bytes:
    """`encode_binary` for plain columns (no numpy): the same bytes for the same readings.

    `rh` None (or all NaN) means no humidity column; NaN in it marks a reading without humidity.
    """
    n = _check_columns(t_ms, celsius, rh, extras)
    has_rh = rh is not None and not all(math.isnan(h) for h in rh)
    return _binary_payload(
        device=device,
        seq=seq,
        sent_ms=sent_ms,
        n=n,
        t_bytes=_little_endian(array("q", t_ms)),
        c_bytes=_little_endian(array("f", celsius)),
        rh_bytes=_little_endian(array("f", rh)) if rh is not None and has_rh else None,
        extras=extras,
    )


def _little_endian(column: array[Any]) -> bytes:
    """A column's bytes in the wire's byte order, whatever the host's."""
    if _BIG_ENDIAN_HOST:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def _binary_payload(
    *,
    device: str,
    seq: int,
    sent_ms: int,
    n: int,
    t_bytes: bytes,
    c_bytes: bytes,
    rh_bytes: bytes | None,
    extras: Extras | None,
) -> bytes:
    """Assemble a binary batch from its already packed columns (little-endian int64, float32)."""
    device_id = device.encode("ascii")
    has_extras = extras is not None and any(extras)
    flags = (_FLAG_RH if rh_bytes is not None else 0) | (_FLAG_EXTRAS if has_extras else 0)
    parts = [
        _HEAD.pack(BINARY_MAGIC, FORMAT_VERSION, flags, len(device_id)),
        device_id,
        _NUMBERS.pack(seq, sent_ms, n),
        t_bytes,
        c_bytes,
    ]
    if rh_bytes is not None:
        parts.append(rh_bytes)
    if has_extras:
        blob = orjson.dumps(list(extras or ()))
        parts.append(struct.pack("<I", len(blob)))
        parts.append(blob)
    return b"".join(parts)


def decode_binary(payload: bytes) -> ReadingBatch:
    """Decode the binary form; lengths are checked before any array is read."""
    if len(payload) < _HEAD.size:
        raise DecodeError("binary batch is truncated", reason="truncated")
    magic, version, flags, dev_len = _HEAD.unpack_from(payload, 0)
    if magic != BINARY_MAGIC:
        raise DecodeError("bad magic", reason="bad_format")
    if version != FORMAT_VERSION:
        raise DecodeError(f"unsupported format version {version}", reason="bad_version")
    if flags & ~(_FLAG_RH | _FLAG_EXTRAS):
        raise DecodeError(f"unknown flags {flags:#x}", reason="bad_format")
    pos = _HEAD.size
    if len(payload) < pos + dev_len + _NUMBERS.size:
        raise DecodeError("binary batch is truncated", reason="truncated")
    try:
        device = payload[pos : pos + dev_len].decode("ascii")
        validate_device_name(device)
    except (UnicodeDecodeError, ValidationError):
        raise DecodeError("device id is not valid", reason="bad_device") from None
    pos += dev_len
    seq, sent_ms, n = _NUMBERS.unpack_from(payload, pos)
    pos += _NUMBERS.size
    if seq >= 1 << 63:
        raise DecodeError("seq is out of range", reason="bad_seq")
    if n > MAX_READINGS:
        raise DecodeError(f"more than {MAX_READINGS} readings", reason="oversize")
    has_rh = bool(flags & _FLAG_RH)
    need = pos + n * (8 + 4 + (4 if has_rh else 0))
    if len(payload) < need:
        raise DecodeError("binary batch is truncated", reason="truncated")
    import numpy as np

    t = np.frombuffer(payload, dtype="<i8", count=n, offset=pos).astype(np.int64)
    pos += 8 * n
    c = np.frombuffer(payload, dtype="<f4", count=n, offset=pos).astype(np.float64)
    pos += 4 * n
    if has_rh:
        rh = np.frombuffer(payload, dtype="<f4", count=n, offset=pos).astype(np.float64)
        pos += 4 * n
    else:
        rh = np.full(n, np.nan)
    extras: tuple[dict[str, Any] | None, ...] | None = None
    if flags & _FLAG_EXTRAS:
        if len(payload) < pos + 4:
            raise DecodeError("binary batch is truncated", reason="truncated")
        (size,) = struct.unpack_from("<I", payload, pos)
        pos += 4
        if len(payload) < pos + size:
            raise DecodeError("binary batch is truncated", reason="truncated")
        try:
            items = orjson.loads(payload[pos : pos + size])
        except orjson.JSONDecodeError:
            raise DecodeError("extras block is not JSON", reason="bad_format") from None
        pos += size
        if not isinstance(items, list) or len(items) != n:
            raise DecodeError("extras block does not match readings", reason="bad_format")
        if not all(item is None or isinstance(item, dict) for item in items):
            raise DecodeError("extras must be objects or null", reason="bad_format")
        check_sensor_fields(items)
        extras = tuple(items)
    if pos != len(payload):
        raise DecodeError(f"{len(payload) - pos} trailing bytes", reason="trailing_bytes")
    return ReadingBatch(device=device, seq=seq, sent_ms=sent_ms, t_ms=t, celsius=c, rh=rh, extras=extras)


# --------------------------------------------------------------------------- status and config


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The retained status a device publishes (and its last will: state offline).

    `started_ms` is when the logger started logging (its first reading of the trip): the
    platform's start delay counts from it, not from the first reading it happens to receive.
    """

    state: str
    battery: float | None = None
    queue: int | None = None
    fw: str | None = None
    signal_dbm: float | None = None
    applied_config: int | None = None
    started_ms: int | None = None

    def __post_init__(self) -> None:
        if self.state not in ("online", "offline"):
            raise ValidationError("state must be 'online' or 'offline'", field="state")
        if self.started_ms is not None and (
            isinstance(self.started_ms, bool) or not isinstance(self.started_ms, int) or self.started_ms < 0
        ):
            raise ValidationError("started_ms must be epoch milliseconds", field="started_ms")

    def encode(self) -> bytes:
        doc = {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, payload: bytes) -> DeviceStatus:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise DecodeError("status is not JSON", reason="bad_json") from None
        if not isinstance(doc, dict):
            raise DecodeError("status must be an object", reason="bad_json")
        known = {k: doc[k] for k in cls.__slots__ if k in doc}
        try:
            return cls(**known)
        except (TypeError, ValidationError) as exc:
            raise DecodeError(str(exc), reason="bad_status") from None


OFFLINE_STATUS: Final = DeviceStatus(state="offline").encode()


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """What the platform asks of a device (retained on its config topic); `version` grows."""

    version: int = 0
    interval_s: int = 60
    batch_size: int = 10
    batch_age_s: int = 600
    shipment: str | None = None
    profile: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.interval_s <= 86_400:
            raise ValidationError("interval_s must be between 1 and 86400", field="interval_s")
        if not 1 <= self.batch_size <= MAX_READINGS:
            raise ValidationError(f"batch_size must be between 1 and {MAX_READINGS}", field="batch_size")
        if not 1 <= self.batch_age_s <= 86_400:
            raise ValidationError("batch_age_s must be between 1 and 86400", field="batch_age_s")

    def encode(self) -> bytes:
        return orjson.dumps({k: getattr(self, k) for k in self.__slots__})

    @classmethod
    def decode(cls, payload: bytes) -> DeviceConfig:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise DecodeError("config is not JSON", reason="bad_json") from None
        if not isinstance(doc, dict):
            raise DecodeError("config must be an object", reason="bad_json")
        unknown = set(doc) - set(cls.__slots__)
        if unknown:
            raise DecodeError(f"unknown config keys {sorted(unknown)}", reason="bad_config")
        try:
            return cls(**doc)
        except (TypeError, ValidationError) as exc:
            raise DecodeError(str(exc), reason="bad_config") from None
