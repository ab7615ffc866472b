"""The pure core of ingest: a raw MQTT message to a decoded batch, a status or a rejection, and the
vectorised reading checks, clock-offset estimate and sequence-gap arithmetic. No I/O here."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import orjson

from coldchain.domain import ReadingBatch
from coldchain.errors import DecodeError
from coldchain.settings import Settings
from coldchain.wire import DeviceStatus, Topics, decode_batch

MessageKind = Literal["readings", "status"]
# Times beyond this many ms from the epoch (about 35,000 years) would overflow the conversion to
# PostgreSQL microseconds; they are rejected before any arithmetic.
_TIME_LIMIT_MS: Final = 1 << 50
DEAD_LETTER_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class AcceptanceBounds:
    """What ingest accepts (payload size, plausible values, how far in the future or past a reading
    may lie) and when it corrects a clock or calls a batch late; built from Settings at start-up.
    Not the alarm limits of a profile: a reading outside these is refused, not alarmed on."""

    max_payload_bytes: int = 1 << 20
    min_celsius: float = -100.0
    max_celsius: float = 100.0
    min_rh: float = 0.0
    max_rh: float = 100.0
    max_future_ms: int = 300_000
    max_past_ms: int = 400 * 86_400_000
    # A device clock this far off the receive time is corrected (readings keep the device time
    # as t - batches.clock_offset_ms); a clock behind only after this much agreeing evidence.
    clock_correct_ms: int = 2_000
    clock_evidence_ms: int = 10 * 60_000
    # A batch whose newest reading is older than this when it arrives is late (back-filled).
    late_after_ms: int = 15 * 60_000
    dead_letter_bytes: int = DEAD_LETTER_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> AcceptanceBounds:
        return cls(
            max_payload_bytes=settings.ingest_max_payload_bytes,
            min_celsius=settings.ingest_min_celsius,
            max_celsius=settings.ingest_max_celsius,
            max_future_ms=settings.ingest_max_future_s * 1000,
            max_past_ms=settings.ingest_max_past_days * 86_400_000,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """A message as the MQTT callback hands it over: nothing decoded yet.

    `generation` counts broker connections; an ack is sent only on the connection the message
    came in on (after a reconnect the broker redelivers it and the batch key skips the copy).
    `held_id` marks a batch coming back out of quarantine (no ack: it never was an MQTT message).
    """

    topic: str
    payload: bytes
    received_ms: int
    kind: MessageKind = "readings"
    mid: int = 0
    qos: int = 0
    generation: int = 0
    held_id: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot be stored; it becomes a dead letter."""

    reason: str
    detail: str
    device_id: str | None


@dataclass(frozen=True, slots=True)
class DeviceStatusUpdate:
    """A device's retained status message, decoded (stored on the device row, newest wins)."""

    device_id: str
    status: dict[str, Any]


Outcome = ReadingBatch | Rejection | DeviceStatusUpdate | None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message with its decoded outcome (None: nothing to store, e.g. a cleared retained status)."""

    message: Message
    outcome: Outcome


def _device_in_topic(topics: Topics, topic: str, leaf: str) -> str | None:
    if not topic.endswith("/" + leaf):
        return None
    return topics.device_of(topic)


def decode_message(message: Message, *, topics: Topics, limits: AcceptanceBounds) -> Outcome:
    """Decode one message. Never raises: anything unexpected is a rejection with a reason."""
    try:
        if message.kind == "status":
            return _decode_status(message, topics)
        return _decode_readings(message, topics, limits)
    except Exception as exc:  # a malformed payload must never stop the worker
        return Rejection("undecodable", f"{type(exc).__name__}: {exc}"[:500], None)


def _decode_readings(message: Message, topics: Topics, limits: AcceptanceBounds) -> Outcome:
    device = _device_in_topic(topics, message.topic, "readings")
    if device is None:
        return Rejection("bad_topic", "topic is not coldchain/v1/{device}/readings", None)
    size = len(message.payload)
    if size > limits.max_payload_bytes:
        return Rejection("oversize", f"{size} bytes exceed {limits.max_payload_bytes}", device)
    try:
        batch = decode_batch(message.payload, max_bytes=limits.max_payload_bytes)
    except DecodeError as exc:
        return Rejection(exc.reason, str(exc)[:500], device)
    if batch.device != device:
        return Rejection(
            "device_mismatch", f"payload device {batch.device!r} differs from the topic's", device
        )
    if not -_TIME_LIMIT_MS < batch.sent_ms < _TIME_LIMIT_MS:
        return Rejection("bad_time", "sent is out of range", device)
    return batch


def _decode_status(message: Message, topics: Topics) -> Outcome:
    device = _device_in_topic(topics, message.topic, "status")
    if device is None:
        return Rejection("bad_topic", "topic is not coldchain/v1/{device}/status", None)
    if not message.payload:
        return None  # a retained status being cleared
    try:
        status = DeviceStatus.decode(message.payload)
    except DecodeError as exc:
        return Rejection(exc.reason, str(exc)[:500], device)
    doc = {k: getattr(status, k) for k in status.__slots__ if getattr(status, k) is not None}
    return DeviceStatusUpdate(device, doc)


# --------------------------------------------------------------------------- reading checks


class ReadingFault(IntEnum):
    """Why a single reading is refused (0: accepted). Codes are stable: they name dead letters."""

    OK = 0
    NOT_FINITE = 1
    OUT_OF_RANGE = 2
    FUTURE_TIME = 3
    PAST_TIME = 4
    BAD_TIME = 5


FAULT_REASON: Final = {
    ReadingFault.NOT_FINITE: "not_finite",
    ReadingFault.OUT_OF_RANGE: "out_of_range",
    ReadingFault.FUTURE_TIME: "future_time",
    ReadingFault.PAST_TIME: "past_time",
    ReadingFault.BAD_TIME: "bad_time",
}


def check_readings(
    *,
    t_device_ms: npt.NDArray[np.int64],
    offset_ms: npt.NDArray[np.int64],
    celsius: npt.NDArray[np.float64],
    rh: npt.NDArray[np.float64],
    now_ms: int,
    limits: AcceptanceBounds,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Corrected times and a fault code per reading, for a whole group at once.

    Humidity NaN means "not measured" and is allowed; an infinite humidity is not. When several
    faults apply, the last one assigned wins (time faults, then range, then non-finite).
    """
    fault = np.zeros(len(t_device_ms), dtype=np.uint8)
    sane = np.abs(t_device_ms) < _TIME_LIMIT_MS
    t = np.where(sane, t_device_ms, 0) + offset_ms
    fault[t > now_ms + limits.max_future_ms] = ReadingFault.FUTURE_TIME
    fault[t < now_ms - limits.max_past_ms] = ReadingFault.PAST_TIME
    fault[~sane] = ReadingFault.BAD_TIME
    with np.errstate(invalid="ignore"):
        bad_rh = (rh < limits.min_rh) | (rh > limits.max_rh)
        out = (celsius < limits.min_celsius) | (celsius > limits.max_celsius) | bad_rh
    fault[out] = ReadingFault.OUT_OF_RANGE
    fault[~np.isfinite(celsius) | np.isinf(rh)] = ReadingFault.NOT_FINITE
    return t, fault


# --------------------------------------------------------------------------- clock offset


@dataclass(slots=True)
class ClockTracker:
    """Per-device estimate of (receive time - device clock), and when to correct readings by it.

    Each batch gives a sample `received - sent` = clock offset + transit delay. Delay is never
    negative, so the smallest recent sample is the best estimate (as NTP's clock filter does).
    A clock running ahead (negative estimate) cannot be explained by delay and is corrected at
    once. A positive estimate is also what a backlog looks like (a broker holding batches while
    ingest was down), so it is trusted only once samples received over `evidence_ms` all agree:
    a backlog drains within seconds, and the next live batch pulls the minimum back down.
    """

    threshold_ms: int = 2_000
    evidence_ms: int = 10 * 60_000
    horizon_ms: int = 60 * 60_000
    slots: int = 64
    _samples: dict[int, deque[tuple[int, int]]] = field(default_factory=dict)

    def observe(self, device_key: int, *, received_ms: int, sent_ms: int, seed: int | None) -> int:
        """Record a batch; return the offset to add to its reading times (0: leave them)."""
        samples = self._samples.get(device_key)
        if samples is None:
            samples = self._samples[device_key] = deque()
            if seed is not None:
                samples.append((received_ms, seed))
        sample = received_ms - sent_ms
        step = self.horizon_ms // self.slots
        if samples and received_ms - samples[-1][0] < step:
            at, best = samples[-1]
            samples[-1] = (at, min(best, sample))
        else:
            samples.append((received_ms, sample))
        while len(samples) > 1 and received_ms - samples[0][0] > self.horizon_ms:
            samples.popleft()
        estimate = min(s for _, s in samples)
        if estimate < -self.threshold_ms:
            return estimate
        if estimate > self.threshold_ms and received_ms - samples[0][0] >= self.evidence_ms:
            return estimate
        return 0

    def estimate(self, device_key: int) -> int | None:
        samples = self._samples.get(device_key)
        return min(s for _, s in samples) if samples else None


# --------------------------------------------------------------------------- sequence gaps


@dataclass(frozen=True, slots=True)
class SeqAccount:
    """What a device's new batch numbers mean against the highest number stored before."""

    gaps: tuple[tuple[int, int], ...]  # (from_seq, to_seq) never seen, newly detected
    fills: tuple[int, ...]  # numbers below the previous highest: late arrivals that may fill a gap
    highest: int


def account_seqs(last_seq: int | None, seqs: Iterable[int]) -> SeqAccount:
    """Gaps and fills for a device's new (not duplicate) batch numbers.

    The first batch ever seen sets the baseline: a device registered mid-life is not a loss.
    """
    ordered = sorted(seqs)
    gaps: list[tuple[int, int]] = []
    fills: list[int] = []
    high = last_seq
    for s in ordered:
        if high is None:
            high = s
        elif s > high:
            if s > high + 1:
                gaps.append((high + 1, s - 1))
            high = s
        else:
            fills.append(s)
    assert high is not None or not ordered
    return SeqAccount(tuple(gaps), tuple(fills), high if high is not None else -1)


def extras_json(batch: ReadingBatch) -> str | None:
    """The batch's per-reading extra fields as JSON text (None when no reading had any)."""
    if batch.extras is None:
        return None
    return orjson.dumps(list(batch.extras)).decode()


@dataclass(frozen=True, slots=True)
class SummaryExtremes:
    """The edge's summary readings in one batch (an outbox that overflowed folds each bucket into
    one reading with the bucket's mean): where they are, and each one's extremes and span."""

    mask: npt.NDArray[np.bool_]
    min_c: npt.NDArray[np.float64]
    max_c: npt.NDArray[np.float64]
    n: npt.NDArray[np.int32]
    t_last_ms: npt.NDArray[np.int64]


def summary_extremes(batch: ReadingBatch) -> SummaryExtremes | None:
    """The batch's summary readings (extras `summary`, `min_c`, `max_c`), or None when it has none.

    A summary without both extremes, or with extremes that do not enclose its mean, is judged by
    its mean alone rather than by numbers that contradict each other.
    """
    if batch.extras is None:
        return None
    n = len(batch.extras)
    mask = np.zeros(n, bool)
    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    count = np.ones(n, np.int32)
    last = np.asarray(batch.t_ms, dtype=np.int64).copy()
    for i, extra in enumerate(batch.extras):
        if not extra or not extra.get("summary"):
            continue
        low, high = extra.get("min_c"), extra.get("max_c")
        if not isinstance(low, int | float) or not isinstance(high, int | float):
            continue
        c = float(batch.celsius[i])
        if not (math.isfinite(low) and math.isfinite(high) and low <= c <= high):
            continue
        mask[i], lo[i], hi[i] = True, float(low), float(high)
        if isinstance(extra.get("n"), int) and extra["n"] > 0:
            count[i] = min(int(extra["n"]), 2**31 - 1)
        t_last = extra.get("t_last")
        if isinstance(t_last, int) and t_last >= last[i]:
            last[i] = t_last
    return SummaryExtremes(mask, lo, hi, count, last) if bool(mask.any()) else None


def door_open(batch: ReadingBatch) -> npt.NDArray[np.bool_] | None:
    """Readings taken with the door open (extras field `door`), or None when none say so."""
    if batch.extras is None:
        return None
    flags = np.fromiter(
        (e is not None and e.get("door") in (True, "open") for e in batch.extras),
        dtype=np.bool_, count=len(batch.extras),
    )
    return flags if bool(flags.any()) else None


def light_on(batch: ReadingBatch) -> npt.NDArray[np.bool_] | None:
    """Readings taken with light inside the box (extras field `light`), or None when none say so."""
    if batch.extras is None:
        return None
    flags = np.fromiter(
        (e is not None and e.get("light") in (True, "on") for e in batch.extras),
        dtype=np.bool_, count=len(batch.extras),
    )
    return flags if bool(flags.any()) else None


def sensor_columns(
    batch: ReadingBatch,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Position (lat, lon) and shock per reading, NaN where not reported; None when none are.

    The decoder has checked their ranges (coldchain.wire.check_sensor_fields)."""
    if batch.extras is None:
        return None
    n = len(batch.extras)
    if not any(e and ("lat" in e or "shock_g" in e) for e in batch.extras):
        return None

    def column(name: str) -> npt.NDArray[np.float64]:
        return np.fromiter(
            (math.nan if not e or e.get(name) is None else float(e[name]) for e in batch.extras or ()),
            dtype=np.float64, count=n,
        )

    return column("lat"), column("lon"), column("shock_g")
