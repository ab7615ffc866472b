"""100,000 malformed reading batches: random bytes, truncated and corrupted binary, wrong JSON
types, huge arrays, bad timestamps. Ingest's decode core refuses every one with a reason and never
raises; a few thousand also go through the real broker and each becomes exactly one dead letter."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import psycopg
import pytest

from coldchain.domain import ReadingBatch
from coldchain.settings import Settings
from coldchain.wire import Topics, encode_binary
from ingest import IngestService
from ingest.core import AcceptanceBounds, Message, Rejection, check_readings, decode_message
from tests.support.ingest import Publisher, make_batch, now_ms, register, scalar, wait_until

DEVICE = "FUZZ-1"
TOPICS = Topics(prefix="fuzz/")
LIMITS = AcceptanceBounds()


def _valid_doc(rng: random.Random) -> dict[str, object]:
    n = rng.randint(1, 5)
    t0 = now_ms() - 60_000
    return {
        "v": 1, "device": DEVICE, "seq": rng.randint(0, 10**6), "sent": t0,
        "readings": [{"t": t0 + i * 1000, "c": 4.0 + i, "rh": 50.0} for i in range(n)],
    }


_WRONG = [None, True, "x", "", 1.5, -1, [], {}, [1, 2], {"a": 1}, 2**70, "2026-13-45T99:00:00Z",
          "2026-11-24T10:14:00", "yesterday", float("inf")]


def _json_mutant(rng: random.Random) -> bytes:
    doc = _valid_doc(rng)
    kind = rng.randrange(9)
    if kind == 0:  # a top-level field of the wrong type (or missing)
        key = rng.choice(["v", "device", "seq", "sent", "readings"])
        if rng.random() < 0.2:
            del doc[key]
        else:
            # (-1 is a valid epoch-ms `sent`; [] a valid empty batch, a heartbeat)
            doc[key] = rng.choice([w for w in _WRONG if not (key == "sent" and w == -1)
                                   and not (key == "readings" and w == [])])
    elif kind == 1:  # a reading field of the wrong type
        readings = doc["readings"]
        assert isinstance(readings, list)
        key = rng.choice(["t", "c", "rh"])
        readings[rng.randrange(len(readings))][key] = rng.choice(
            [w for w in _WRONG if not isinstance(w, (int, float)) or isinstance(w, bool)
             if not (key == "rh" and w is None)]  # a null humidity means "not measured"
        )
    elif kind == 2:  # a reading that is not an object
        readings = doc["readings"]
        assert isinstance(readings, list)
        readings[rng.randrange(len(readings))] = rng.choice([1, "r", None, [1, 2]])
    elif kind == 3:  # a huge array (sometimes), or readings that are not a list of objects
        if rng.random() < 0.1:
            doc["readings"] = [{"t": 0, "c": 1.0}] * rng.choice([20_001, 25_000])
        else:
            doc["readings"] = rng.choice([[[1, 2]], "readings", {"t": 0}, [[]], 7])
    elif kind == 4:  # a device id that breaks the topic alphabet, or another device
        doc["device"] = rng.choice(["", "a b", "x" * 65, "dev/1", "FUZZ-2", "ünïcode"])
    elif kind == 5:  # unsupported version
        doc["v"] = rng.choice([0, 2, 99, "1"])
    elif kind == 6:  # too many extra fields / nested extras
        readings = doc["readings"]
        assert isinstance(readings, list)
        readings[0].update({f"k{i}": i for i in range(20)} if rng.random() < 0.5 else {"door": {"x": 1}})
    elif kind == 7:  # every reading time out of any sane range
        readings = doc["readings"]
        assert isinstance(readings, list)
        for r in readings:
            r["t"] = rng.choice([2**62, -(2**62), 10**19])
    else:  # not even JSON any more
        text = orjson.dumps(doc)
        cut = rng.randrange(1, len(text))
        return text[:cut]
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits
        return json.dumps(doc).encode()


def _binary_mutant(rng: random.Random) -> bytes:
    n = rng.randint(1, 40)
    batch = make_batch(DEVICE, rng.randint(0, 10**6), n=n)
    if rng.random() < 0.3:
        batch = ReadingBatch(device=batch.device, seq=batch.seq, sent_ms=batch.sent_ms,
                             t_ms=batch.t_ms, celsius=batch.celsius, rh=batch.rh,
                             extras=tuple({"door": "open"} if i % 2 else None for i in range(n)))
    raw = bytearray(encode_binary(batch))
    kind = rng.randrange(6)
    if kind == 0:  # truncated anywhere
        return bytes(raw[: rng.randrange(0, len(raw))])
    if kind == 1:  # trailing garbage
        return bytes(raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9))))
    if kind == 2:  # bad version or unknown flags
        raw[3 if rng.random() < 0.5 else 4] = rng.choice([0, 2, 7, 0x80, 0xFF])
        if raw[4] in (0, 1, 2, 3) and raw[3] == 1:
            raw[3] = 9
        return bytes(raw)
    if kind == 3:  # the reading count lies (a huge array announced)
        dev_len = raw[5]
        pos = 6 + dev_len + 16
        raw[pos : pos + 4] = rng.choice([n + 1, n + 1000, 20_001, 2**32 - 1]).to_bytes(4, "little")
        return bytes(raw)
    if kind == 4:  # the device id is corrupted or differs from the topic's
        raw[6] = rng.choice([ord(" "), ord("/"), 0xFF, ord("Q")])
        return bytes(raw)
    # NaN / inf / impossible temperatures in every reading
    bad = rng.choice([np.nan, np.inf, -np.inf, 1e6, -500.0])
    batch2 = ReadingBatch(device=DEVICE, seq=batch.seq, sent_ms=batch.sent_ms, t_ms=batch.t_ms,
                          celsius=np.full(n, bad), rh=batch.rh)
    return encode_binary(batch2)


def _random_bytes(rng: random.Random) -> bytes:
    head = rng.choice([b"", b"{", b"CCB", b"CCB\x01", b" ", b"[", b"\xef\xbb\xbf{"])
    return head + rng.randbytes(rng.randint(0, 120))


def malformed_payloads(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    makers: list[Callable[[random.Random], bytes]] = [_random_bytes, _json_mutant, _binary_mutant]
    for _ in range(count):
        yield rng.choice(makers)(rng)


def refused(payload: bytes, *, topic: str) -> str | None:
    """The dead-letter reason ingest gives this payload (None would mean it was accepted)."""
    outcome = decode_message(
        Message(topic=topic, payload=payload, received_ms=now_ms()), topics=TOPICS, limits=LIMITS
    )
    if isinstance(outcome, Rejection):
        return outcome.reason
    assert isinstance(outcome, ReadingBatch)
    _, fault = check_readings(
        t_device_ms=outcome.t_ms, offset_ms=np.zeros(len(outcome), dtype=np.int64),
        celsius=outcome.celsius, rh=outcome.rh, now_ms=now_ms(), limits=LIMITS,
    )
    if len(outcome) and bool((fault != 0).all()):
        return "readings"
    return None


def test_100k_malformed_payloads_all_refused_by_the_core() -> None:
    topic = TOPICS.readings(DEVICE)
    reasons: Counter[str] = Counter()
    accepted = []
    for payload in malformed_payloads(seed=20261124, count=100_000):
        reason = refused(payload, topic=topic)
        if reason is None:
            accepted.append(payload)
        else:
            reasons[reason] += 1
    assert accepted == []
    assert sum(reasons.values()) == 100_000
    # the fuzzer reaches many distinct failure paths, not one
    assert len(reasons) >= 12, reasons


def test_oversize_and_bad_topics_refused() -> None:
    assert refused(b"{" + b" " * (LIMITS.max_payload_bytes + 1), topic=TOPICS.readings(DEVICE)) == "oversize"
    assert refused(b"{}", topic="fuzz/coldchain/v1/readings") == "bad_topic"
    assert refused(b"{}", topic="other/coldchain/v1/FUZZ-1/readings") == "bad_topic"


@pytest.fixture
def service(db_dsn: str, mqtt_url: str, topics: Topics) -> Iterator[IngestService]:
    svc = IngestService(dsn=db_dsn, mqtt_url=mqtt_url, topics=topics,
                        settings=Settings(ingest_group_max_wait_ms=20),
                        client_id=f"ingest-{uuid.uuid4().hex[:8]}")
    svc.start()
    assert svc.wait_ready(30)
    yield svc
    svc.stop()


def test_malformed_payloads_through_the_broker_are_dead_letters(
    db: psycopg.Connection, service: IngestService, mqtt_url: str, topics: Topics
) -> None:
    register(db, [DEVICE], shipment=None)
    topic = topics.readings(DEVICE)
    # Only payloads refused as a whole: a decodable batch with bad readings consumes its seq, so
    # a second fuzz batch with the same seq would rightly count as a redelivery.
    chosen = [
        p for p in malformed_payloads(seed=7, count=4000)
        if refused(p, topic=TOPICS.readings(DEVICE)) not in (None, "readings")
    ][:3000]
    with Publisher(mqtt_url) as pub:
        for payload in chosen:
            pub.publish(topic, payload)
        pub.publish(topic, encode_binary(make_batch(DEVICE, 1, n=10)))
        assert pub.wait_all_acked(len(chosen) + 1)
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == 10)
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM dead_letters") >= len(chosen))
    assert scalar(db, "SELECT count(*) FROM dead_letters") == len(chosen)
    assert scalar(db, "SELECT dead_letter_count FROM devices WHERE id = %s", (DEVICE,)) == len(chosen)
    assert service.stats.dead_letters == len(chosen)
    assert len(chosen) == 3000
