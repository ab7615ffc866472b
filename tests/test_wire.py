"""The wire codec: the contract's JSON example, both forms round-trip, the documented binary
example decodes, and bad payloads fail with a reason (never another exception)."""

from __future__ import annotations

import dataclasses
import math
import re
import struct
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldchain import wire
from coldchain.domain import ReadingBatch
from coldchain.errors import DecodeError, ValidationError
from coldchain.wire import (
    DeviceConfig,
    DeviceStatus,
    Topics,
    decode_batch,
    encode_binary,
    encode_binary_columns,
    encode_json,
    encode_json_columns,
    parse_time_ms,
)
from tests.support.contract import CONTRACT_EXAMPLE


def test_contract_example_decodes() -> None:
    batch = decode_batch(CONTRACT_EXAMPLE)
    assert batch.device == "TRK-0042-L1" and batch.seq == 1187
    assert batch.sent_ms == 1795515300000
    assert batch.t_ms.tolist() == [1795515240000, 1795515300000]
    assert batch.celsius.tolist() == [4.6, 4.7]
    assert batch.rh[0] == 61.2 and math.isnan(batch.rh[1])


def test_documented_binary_example_decodes() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "wire-format.md").read_text()
    block = doc.split("### Worked example", 1)[1].split("```", 2)[1]
    payload = bytearray()
    for line in block.splitlines():
        for token in line.split():  # the bytes come first on each line, then a comment
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break
            payload.append(int(token, 16))
    batch = decode_batch(bytes(payload))
    assert (batch.device, batch.seq, batch.sent_ms) == ("TRK-1", 7, 1795515300000)
    assert batch.celsius.tolist() == [4.5, 4.75]


_extras = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["door", "light", "battery"]),
        st.one_of(st.booleans(), st.integers(-5, 100)),
        min_size=1,
    ),
)


@st.composite
def batches(draw: st.DrawFn, *, float32: bool) -> ReadingBatch:
    n = draw(st.integers(0, 40))
    temps = st.floats(-90, 90, allow_nan=False, width=32 if float32 else 64)
    hums = st.one_of(st.just(math.nan), st.floats(0, 100, width=32 if float32 else 64))
    extras = draw(st.lists(_extras, min_size=n, max_size=n))
    return ReadingBatch(
        device=draw(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)),
        seq=draw(st.integers(0, 2**63 - 1)),
        sent_ms=draw(st.integers(0, 4_102_444_800_000)),
        t_ms=np.array(
            draw(st.lists(st.integers(0, 4_102_444_800_000), min_size=n, max_size=n)), dtype=np.int64
        ),
        celsius=np.array(draw(st.lists(temps, min_size=n, max_size=n)), dtype=np.float64),
        rh=np.array(draw(st.lists(hums, min_size=n, max_size=n)), dtype=np.float64),
        extras=tuple(extras) if any(extras) else None,
    )


@given(batches(float32=False))
def test_json_round_trip(batch: ReadingBatch) -> None:
    assert decode_batch(encode_json(batch)) == batch


@given(batches(float32=True))
def test_binary_round_trip(batch: ReadingBatch) -> None:
    assert decode_batch(encode_binary(batch)) == batch


@given(batches(float32=False), st.booleans(), st.booleans())
def test_column_encoders_give_the_same_bytes(
    batch: ReadingBatch, as_array: bool, drop_empty_rh: bool
) -> None:
    """The edge encodes plain columns without numpy; the platform must not see a difference."""
    t, c, rh = batch.t_ms.tolist(), batch.celsius.tolist(), batch.rh.tolist()
    no_rh = all(math.isnan(h) for h in rh)
    columns = {
        "device": batch.device,
        "seq": batch.seq,
        "sent_ms": batch.sent_ms,
        "t_ms": array("q", t) if as_array else t,
        "celsius": array("d", c) if as_array else c,
        "rh": None if no_rh and drop_empty_rh else (array("d", rh) if as_array else rh),
        "extras": batch.extras,
    }
    binary = encode_binary_columns(**columns)  # type: ignore[arg-type]
    assert binary == encode_binary(batch)
    text = encode_json_columns(**columns)  # type: ignore[arg-type]
    assert text == encode_json(batch)
    assert decode_batch(text) == batch
    as_float32 = dataclasses.replace(
        batch,
        celsius=batch.celsius.astype(np.float32).astype(np.float64),
        rh=batch.rh.astype(np.float32).astype(np.float64),
    )
    assert decode_batch(binary) == as_float32


def test_column_encoders_refuse_ragged_columns() -> None:
    with pytest.raises(ValidationError):
        encode_binary_columns(device="A", seq=1, sent_ms=0, t_ms=[1, 2], celsius=[4.0])
    with pytest.raises(ValidationError):
        encode_json_columns(device="A", seq=1, sent_ms=0, t_ms=[1], celsius=[4.0], rh=[1.0, 2.0])
    with pytest.raises(ValidationError):
        encode_binary_columns(device="A", seq=1, sent_ms=0, t_ms=[1], celsius=[4.0], extras=())


def test_columns_are_little_endian_whatever_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    values = (1, -2, 1 << 40)
    column = array("q", values)
    assert wire._little_endian(column) == struct.pack("<3q", *values)
    # On a host of the other byte order each value is swapped (a copy; the column is untouched).
    monkeypatch.setattr(wire, "_BIG_ENDIAN_HOST", not wire._BIG_ENDIAN_HOST)
    swapped = struct.pack("<3q" if sys.byteorder == "big" else ">3q", *values)
    assert wire._little_endian(column) == swapped
    assert column.tolist() == list(values)


@given(st.binary(max_size=300))
def test_random_bytes_fail_with_a_reason(payload: bytes) -> None:
    try:
        decode_batch(payload)
    except DecodeError as exc:
        assert exc.reason


@given(batches(float32=True), st.data())
def test_truncated_or_padded_binary_is_refused(batch: ReadingBatch, data: st.DataObject) -> None:
    payload = encode_binary(batch)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(DecodeError) as info:
        decode_batch(payload[:cut])
    assert info.value.reason in {"truncated", "bad_format", "bad_device"}
    with pytest.raises(DecodeError, match="trailing"):
        decode_batch(payload + b"\x00")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v": 2, "device": "A", "seq": 1, "sent": 0, "readings": []}', "bad_version"),
        (b'{"v": 1, "device": "A/B", "seq": 1, "sent": 0, "readings": []}', "bad_device"),
        (b'{"v": 1, "device": "A", "seq": -1, "sent": 0, "readings": []}', "bad_seq"),
        (b'{"v": 1, "device": "A", "seq": true, "sent": 0, "readings": []}', "bad_seq"),
        (b'{"v": 1, "device": "A", "seq": 1, "sent": "2026-11-24T10:15:00", "readings": []}', "bad_time"),
        (b'{"v": 1, "device": "A", "seq": 1, "sent": 0, "readings": [{"t": 0, "c": "4"}]}', "bad_value"),
        (
            b'{"v": 1, "device": "A", "seq": 1, "sent": 0, "readings": [{"t": 0, "c": 4, "x": [1]}]}',
            "bad_readings",
        ),
        (b'{"v": 1, "device": "A", "seq": 1, "sent": 0, "readings": {}}', "bad_readings"),
        (b"[1, 2]", "bad_json"),
        (b"{not json", "bad_json"),
        (b"\x00\x01", "bad_format"),
    ],
)
def test_malformed_json_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_batch(payload)
    assert info.value.reason == reason


def test_oversize_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError) as info:
        decode_batch(b"{" + b" " * 100, max_bytes=50)
    assert info.value.reason == "oversize"


def test_topics() -> None:
    topics = Topics("site-a/")
    assert topics.readings("TRK-1") == "site-a/coldchain/v1/TRK-1/readings"
    assert topics.shared_readings() == "$share/ingest/site-a/coldchain/v1/+/readings"
    assert topics.device_of("site-a/coldchain/v1/TRK-1/readings") == "TRK-1"
    assert topics.device_of("coldchain/v1/TRK-1/readings") is None
    with pytest.raises(ValidationError):
        topics.readings("bad/id")
    with pytest.raises(ValidationError):
        Topics("no-slash")


def test_time_parsing() -> None:
    assert parse_time_ms("2026-11-24T10:14:00+01:00") == 1795511640000
    assert parse_time_ms(5) == 5
    for bad in ("yesterday", True, 1.5, None):
        with pytest.raises(DecodeError):
            parse_time_ms(bad)


def test_status_and_config_round_trip() -> None:
    status = DeviceStatus(state="online", battery=0.87, queue=12, fw="1.2.0")
    assert DeviceStatus.decode(status.encode()) == status
    config = DeviceConfig(version=3, interval_s=30, shipment="SO-1", profile={"limits": []})
    assert DeviceConfig.decode(config.encode()) == config
    with pytest.raises(DecodeError):
        DeviceConfig.decode(b'{"interval_s": 0}')
    with pytest.raises(DecodeError):
        DeviceConfig.decode(b'{"surprise": 1}')
