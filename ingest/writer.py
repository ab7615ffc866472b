"""One group of prepared messages into PostgreSQL in one transaction: batch dedupe, validation,
clock correction, lot linking, one binary COPY, and the dead letters, quarantine, data-loss events,
device state and rules queue that go with it."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt
import psycopg

from coldchain.domain import ReadingBatch
from ingest.core import (
    FAULT_REASON,
    AcceptanceBounds,
    ClockTracker,
    DeviceStatusUpdate,
    Message,
    Prepared,
    ReadingFault,
    Rejection,
    SummaryExtremes,
    account_seqs,
    check_readings,
    door_open,
    extras_json,
    light_on,
    sensor_columns,
    summary_extremes,
)
from storage import batches, dead_letters, device_state, rule_queue
from storage.readings import (
    FLAG_CLOCK_CORRECTED,
    FLAG_DOOR_OPEN,
    FLAG_LATE,
    FLAG_LIGHT,
    FLAG_SUMMARY,
    ReadingRows,
    copy_rows,
    store_extremes,
)

log = logging.getLogger(__name__)
_I64_MIN = np.iinfo(np.int64).min


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class GroupResult:
    """What one committed group did (the service adds these up into its stats and metrics)."""

    messages: int = 0
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    quarantined: int = 0
    released: int = 0
    statuses: int = 0
    gaps: int = 0
    late_batches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def merge(self, other: GroupResult) -> None:
        """Add `other`'s counts to these (a group written one message at a time)."""
        for f in fields(GroupResult):
            if f.name != "reasons":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.reasons.update(other.reasons)


@dataclass(slots=True)
class _Known:
    message: Message
    batch: ReadingBatch
    device: device_state.DeviceState


@dataclass(slots=True)
class _Copied:
    """What the copy stage of a group leaves for its accounting stage (columns per known batch)."""

    dev_b: npt.NDArray[np.int32]
    seq_b: npt.NDArray[np.int64]
    late_b: npt.NDArray[np.bool_]
    new_b: npt.NDArray[np.bool_]
    lo_b: npt.NDArray[np.int64]  # time span of the batch's stored readings (for a late fix-up)
    hi_b: npt.NDArray[np.int64]
    rows: ReadingRows | None
    row_b: npt.NDArray[np.int64]  # the known batch of every copied row


@dataclass(slots=True)
class StagedGroup:
    """A group whose batches and readings are in the transaction but whose devices are not locked
    yet: sequence accounting, late flags by sequence, device state, dead letters, statuses and the
    rules queue are finished under the device lock (GroupWriter.finish)."""

    result: GroupResult
    names: list[str]
    letters: list[dead_letters.DeadLetterRow]
    held: list[dead_letters.QuarantineRow]
    released: list[int]
    statuses: list[tuple[Message, DeviceStatusUpdate]]
    known: list[_Known]
    copied: _Copied | None


class GroupWriter:
    """Writes groups; keeps the per-device clock estimate between groups."""

    def __init__(
        self,
        *,
        limits: AcceptanceBounds,
        clock: ClockTracker | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.limits = limits
        self.clock = clock or ClockTracker(
            threshold_ms=limits.clock_correct_ms, evidence_ms=limits.clock_evidence_ms
        )
        self.now_ms = now_ms
        # Two writer threads share the clock estimate: one observes a group while the other
        # reads estimates for the device rows of the group before it.
        self._clock_lock = threading.Lock()

    def write(self, conn: psycopg.Connection, group: Sequence[Prepared]) -> GroupResult:
        """Everything of the group, or nothing: one transaction, committed on return."""
        with conn.transaction():
            return self.finish(conn, self.prepare(conn, group))

    def dead_letter_only(
        self, conn: psycopg.Connection, item: Prepared, *, reason: str, detail: str
    ) -> GroupResult:
        """Store one message as a dead letter (used when storing it failed for a reason of its own)."""
        device = item.outcome.device if isinstance(item.outcome, ReadingBatch) else None
        letter = self._letter(item.message, device, reason, detail)
        with conn.transaction():
            dead_letters.insert_dead_letters(conn, [letter])
            if item.message.held_id is not None:
                dead_letters.mark_released(conn, [item.message.held_id])
        result = GroupResult(messages=1, dead_letters=1)
        result.reasons[reason] += 1
        return result

    def _letter(self, m: Message, device: str | None, reason: str, detail: str) -> dead_letters.DeadLetterRow:
        return dead_letters.DeadLetterRow(
            topic=m.topic,
            device_id=device,
            reason=reason,
            detail=detail,
            payload=m.payload[: self.limits.dead_letter_bytes],
            payload_size=len(m.payload),
            received_ms=m.received_ms,
        )

    def prepare(
        self,
        conn: psycopg.Connection,
        group: Sequence[Prepared],
        *,
        on_deduped: Callable[[], None] | None = None,
    ) -> StagedGroup:
        """The copy stage, in the caller's transaction and without row locks on devices: batch
        dedupe, validation, clock correction, linking and the binary COPY.

        Device key, organisation and clock seed come from a plain read; only `last_seq` needs the
        lock, and what depends on it is settled in `finish`. `on_deduped` is called once the
        group's `batches` rows are in (or when it has none): from then on another transaction
        inserting one of the same batches waits for this one and then skips it.
        """
        result = GroupResult(messages=len(group))
        decoded: list[tuple[Message, ReadingBatch]] = []
        letters: list[dead_letters.DeadLetterRow] = []
        statuses: list[tuple[Message, DeviceStatusUpdate]] = []
        for item in group:
            outcome = item.outcome
            if isinstance(outcome, ReadingBatch):
                decoded.append((item.message, outcome))
            elif isinstance(outcome, Rejection):
                letters.append(self._letter(item.message, outcome.device_id, outcome.reason, outcome.detail))
            elif isinstance(outcome, DeviceStatusUpdate):
                statuses.append((item.message, outcome))

        names = {b.device for _, b in decoded} | {s.device_id for _, s in statuses}
        names |= {d.device_id for d in letters if d.device_id is not None}
        devices = device_state.read_devices(conn, sorted({b.device for _, b in decoded}))

        known: list[_Known] = []
        held: list[dead_letters.QuarantineRow] = []
        released: list[int] = []
        seen: set[tuple[int, int]] = set()
        for m, b in decoded:
            state = devices.get(b.device)
            if state is None:
                if m.held_id is None:  # a released batch whose device went away stays held
                    held.append(
                        dead_letters.QuarantineRow(m.topic, b.device, b.seq, m.payload, m.received_ms)
                    )
                continue
            if m.held_id is not None:
                released.append(m.held_id)
            if (state.key, b.seq) in seen:
                result.duplicates += 1
                continue
            seen.add((state.key, b.seq))
            known.append(_Known(m, b, state))

        copied = self._write_batches(conn, known, result, letters, on_deduped) if known else None
        if copied is None and on_deduped is not None:
            on_deduped()
        return StagedGroup(
            result=result, names=sorted(names), letters=letters, held=held, released=released,
            statuses=statuses, known=known, copied=copied,
        )

    def finish(self, conn: psycopg.Connection, staged: StagedGroup) -> GroupResult:
        """The accounting stage, under the device row locks, in the same transaction."""
        result = staged.result
        devices = device_state.lock_devices(conn, staged.names)
        copied = staged.copied
        if copied is not None:
            last_seq = {s.key: s.last_seq for s in devices.values()}
            self._settle_late(conn, staged.known, copied, last_seq, result)
            if copied.rows is not None:
                self._enqueue_rules(conn, copied.rows, copied.late_b[copied.row_b])
            self._account(conn, staged.known, copied.new_b, last_seq, result)
        letters = staged.letters
        dead_letters.insert_dead_letters(conn, letters)
        result.dead_letters = len(letters)
        result.reasons.update(d.reason for d in letters)
        dead_letters.insert_quarantine(conn, staged.held)
        result.quarantined = len(staged.held)
        dead_letters.mark_released(conn, staged.released)
        result.released = len(staged.released)
        for m, s in staged.statuses:
            if s.device_id in devices:
                device_state.update_status(
                    conn, mqtt_name=s.device_id, status=s.status, received_ms=m.received_ms
                )
                result.statuses += 1
        return result

    def _settle_late(
        self,
        conn: psycopg.Connection,
        known: list[_Known],
        copied: _Copied,
        last_seq: dict[int, int | None],
        result: GroupResult,
    ) -> None:
        """Late-by-sequence against the highest number stored before, read under the lock.

        The copy stage used a number read without the lock; it can only have grown since (another
        transaction committed newer batches of the device), so some new batches may turn late here:
        their `batches` row and readings get the late flag now.
        """
        nb = len(known)
        last_now = np.fromiter(
            (-1 if (v := last_seq.get(k.device.key)) is None else v for k in known), np.int64, nb
        )
        now_late = (last_now >= 0) & (copied.seq_b < last_now)
        turned = now_late & ~copied.late_b & copied.new_b
        if turned.any():
            idx = np.nonzero(turned)[0]
            batches.mark_late(
                conn,
                device_keys=copied.dev_b[idx].tolist(),
                seqs=copied.seq_b[idx].tolist(),
                from_ms=copied.lo_b[idx].tolist(),
                to_ms=copied.hi_b[idx].tolist(),
            )
            copied.late_b = copied.late_b | turned
        result.late_batches = int((copied.late_b & copied.new_b).sum())

    def _write_batches(
        self,
        conn: psycopg.Connection,
        known: list[_Known],
        result: GroupResult,
        letters: list[dead_letters.DeadLetterRow],
        on_deduped: Callable[[], None] | None,
    ) -> _Copied:
        limits = self.limits
        nb = len(known)
        counts = np.fromiter((len(k.batch) for k in known), np.int64, nb)
        starts = np.zeros(nb, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        bidx = np.repeat(np.arange(nb), counts)
        t_dev = np.concatenate([k.batch.t_ms for k in known])
        celsius = np.concatenate([k.batch.celsius for k in known])
        rh = np.concatenate([k.batch.rh for k in known])
        dev_b = np.fromiter((k.device.key for k in known), np.int32, nb)
        org_b = np.fromiter((k.device.org_id for k in known), np.int16, nb)
        seq_b = np.fromiter((k.batch.seq for k in known), np.int64, nb)
        recv_b = np.fromiter((k.message.received_ms for k in known), np.int64, nb)
        sent_b = np.fromiter((k.batch.sent_ms for k in known), np.int64, nb)
        last_b = np.fromiter(
            (-1 if k.device.last_seq is None else k.device.last_seq for k in known), np.int64, nb
        )

        # Clock: the device's filtered offset, when there is evidence enough to apply it.
        with self._clock_lock:
            applied_b = np.fromiter(
                (
                    self.clock.observe(
                        k.device.key,
                        received_ms=k.message.received_ms,
                        sent_ms=k.batch.sent_ms,
                        seed=k.device.clock_offset_ms,
                    )
                    for k in known
                ),
                np.int64,
                nb,
            )
        corrected_b = applied_b != 0

        t, fault = check_readings(
            t_device_ms=t_dev,
            offset_ms=applied_b[bidx],
            celsius=celsius,
            rh=rh,
            now_ms=self.now_ms(),
            limits=limits,
        )
        ok = fault == ReadingFault.OK
        kept_b = np.bincount(bidx[ok], minlength=nb)
        newest_b = np.full(nb, _I64_MIN, dtype=np.int64)
        nonempty = counts > 0
        if nonempty.any():
            newest_b[nonempty] = np.maximum.reduceat(np.where(ok, t, _I64_MIN), starts[nonempty])
        # last_b was read without the lock: finish() adds what turns late by a newer last_seq.
        late_b = ((last_b >= 0) & (seq_b < last_b)) | (
            (kept_b > 0) & (recv_b - newest_b > limits.late_after_ms)
        )

        inserted = batches.insert_batches(
            conn,
            batches.BatchRows(
                device_key=dev_b,
                seq=seq_b,
                org_id=org_b,
                received_ms=recv_b,
                sent_ms=sent_b,
                readings=kept_b.astype(np.int32),
                clock_offset_ms=applied_b,
                late=late_b,
                extras=[extras_json(k.batch) for k in known],
            ),
        )
        if on_deduped is not None:
            on_deduped()
        new_b = np.fromiter(
            ((int(d), int(s)) in inserted for d, s in zip(dev_b, seq_b, strict=True)), bool, nb
        )
        result.duplicates += int(nb - new_b.sum())
        result.batches = int(new_b.sum())

        letters.extend(self._reading_letters(known, bidx, fault, new_b))
        rows_mask = ok & new_b[bidx]
        n_rows = int(rows_mask.sum())
        lo_b = np.zeros(nb, dtype=np.int64)
        hi_b = np.zeros(nb, dtype=np.int64)
        if nonempty.any():
            lo_b[nonempty] = np.minimum.reduceat(
                np.where(rows_mask, t, np.iinfo(np.int64).max), starts[nonempty]
            )
            hi_b[nonempty] = np.maximum.reduceat(np.where(rows_mask, t, _I64_MIN), starts[nonempty])
        copied = _Copied(
            dev_b=dev_b, seq_b=seq_b, late_b=late_b, new_b=new_b, lo_b=lo_b, hi_b=hi_b, rows=None,
            row_b=bidx[rows_mask],
        )
        if n_rows:
            flags_b = np.where(late_b, FLAG_LATE, 0) | np.where(corrected_b, FLAG_CLOCK_CORRECTED, 0)
            flags = flags_b.astype(np.int16)[bidx]
            summaries: list[tuple[int, SummaryExtremes]] = []
            sensors: tuple[npt.NDArray[np.float64], ...] | None = None
            for i, k in enumerate(known):
                if not new_b[i] or k.batch.extras is None:
                    continue  # the common case: no per-reading extras, nothing to look at
                span = slice(starts[i], starts[i] + counts[i])
                door = door_open(k.batch)
                if door is not None:
                    flags[span] |= np.where(door, FLAG_DOOR_OPEN, 0).astype(np.int16)
                light = light_on(k.batch)
                if light is not None:
                    flags[span] |= np.where(light, FLAG_LIGHT, 0).astype(np.int16)
                found = sensor_columns(k.batch)
                if found is not None:
                    if sensors is None:
                        sensors = tuple(np.full(t.size, np.nan) for _ in range(3))
                    for column, values in zip(sensors, found, strict=True):
                        column[span] = values
                summary = summary_extremes(k.batch)
                if summary is not None:
                    flags[span] |= np.where(summary.mask, FLAG_SUMMARY, 0).astype(np.int16)
                    summaries.append((i, summary))
            shipment = self._link(conn, known, t, bidx, starts, counts, rows_mask, new_b & (kept_b > 0))
            rows = ReadingRows(
                org_id=org_b[bidx][rows_mask],
                device_key=dev_b[bidx][rows_mask],
                shipment_key=shipment[rows_mask],
                seq=seq_b[bidx][rows_mask],
                t_ms=t[rows_mask],
                celsius=celsius[rows_mask].astype(np.float32),
                rh=rh[rows_mask].astype(np.float32),
                flags=flags[rows_mask],
            )
            if sensors is not None:
                rows.lat, rows.lon = sensors[0][rows_mask], sensors[1][rows_mask]
                rows.shock_g = sensors[2][rows_mask].astype(np.float32)
            copy_rows(conn, rows)
            if summaries:
                self._store_extremes(conn, summaries, dev_b, t, starts, counts, rows_mask)
            result.readings = n_rows
            copied.rows = rows
        return copied

    @staticmethod
    def _store_extremes(
        conn: psycopg.Connection,
        summaries: list[tuple[int, SummaryExtremes]],
        dev_b: npt.NDArray[np.int32],
        t: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int64],
        rows_mask: npt.NDArray[np.bool_],
    ) -> None:
        """Keep each stored summary reading's extremes beside it, in the same transaction, so the
        rules judge it by them (rare: only an edge outbox that overflowed sends summaries)."""
        parts = []
        for i, summary in summaries:
            a, b = int(starts[i]), int(starts[i] + counts[i])
            stored = summary.mask & rows_mask[a:b]
            if stored.any():
                parts.append((
                    np.full(int(stored.sum()), dev_b[i], np.int32), t[a:b][stored], summary.t_last_ms[stored],
                    summary.n[stored], summary.min_c[stored], summary.max_c[stored],
                ))
        if parts:
            store_extremes(conn, *(np.concatenate(col) for col in zip(*parts, strict=True)))

    def _reading_letters(
        self,
        known: list[_Known],
        bidx: npt.NDArray[np.int64],
        fault: npt.NDArray[np.uint8],
        new_b: npt.NDArray[np.bool_],
    ) -> list[dead_letters.DeadLetterRow]:
        """One dead letter per new batch and fault kind, naming the refused readings."""
        bad = np.nonzero((fault != ReadingFault.OK) & new_b[bidx])[0]
        if not len(bad):
            return []
        letters: list[dead_letters.DeadLetterRow] = []
        keys = bidx[bad] * 8 + fault[bad]
        uniq, first, n = np.unique(keys, return_index=True, return_counts=True)
        for key, lo, count in zip(uniq.tolist(), first.tolist(), n.tolist(), strict=True):
            b, code = divmod(key, 8)
            k = known[b]
            base = int(np.searchsorted(bidx, b))
            idx = (bad[lo : lo + count] - base)[:20].tolist()
            detail = (
                f"{count} of {len(k.batch)} readings refused ({FAULT_REASON[ReadingFault(code)]})"
                f" at index {idx}{' ...' if count > 20 else ''}; batch seq {k.batch.seq}"
            )
            letters.append(self._letter(k.message, k.batch.device, FAULT_REASON[ReadingFault(code)], detail))
        return letters

    def _link(
        self,
        conn: psycopg.Connection,
        known: list[_Known],
        t: npt.NDArray[np.int64],
        bidx: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int64],
        rows_mask: npt.NDArray[np.bool_],
        linked_b: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.int32]:
        """The shipment of every reading (-1: none), from assignment windows read in this transaction.

        Most batches lie inside one window, so the whole batch is labelled at once; only a batch
        that straddles a window edge is labelled reading by reading.
        """
        shipment = np.full(len(t), -1, dtype=np.int32)
        t_ok = t[rows_mask]
        keys = sorted({known[i].device.key for i in np.nonzero(linked_b)[0].tolist()})
        windows = device_state.load_assignments(conn, keys, start_ms=int(t_ok.min()), end_ms=int(t_ok.max()))
        if not windows:
            return shipment
        masked_hi = np.where(rows_mask, t, _I64_MIN)
        nonempty = counts > 0
        lo_b = np.zeros(len(known), dtype=np.int64)
        hi_b = np.zeros(len(known), dtype=np.int64)
        big = np.where(rows_mask, t, np.iinfo(np.int64).max)
        lo_b[nonempty] = np.minimum.reduceat(big, starts[nonempty])
        hi_b[nonempty] = np.maximum.reduceat(masked_hi, starts[nonempty])
        for i in np.nonzero(linked_b)[0].tolist():
            assignments = windows.get(known[i].device.key)
            if not assignments:
                continue
            lo, hi = int(lo_b[i]), int(hi_b[i])
            s, n = int(starts[i]), int(counts[i])
            whole = next((a for a in assignments if a.start_ms <= lo and hi < a.end_ms), None)
            if whole is not None:
                shipment[s : s + n] = whole.shipment_key
            else:
                part = shipment[s : s + n]
                for a in assignments:
                    part[(t[s : s + n] >= a.start_ms) & (t[s : s + n] < a.end_ms)] = a.shipment_key
        return shipment

    def _enqueue_rules(
        self, conn: psycopg.Connection, rows: ReadingRows, late: npt.NDArray[np.bool_]
    ) -> None:
        """One rules work item per (device, shipment) the group touched, spanning its readings."""
        key = (rows.device_key.astype(np.int64) << 32) | (rows.shipment_key.astype(np.int64) + 1)
        uniq, inverse = np.unique(key, return_inverse=True)
        n = len(uniq)
        lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        hi = np.full(n, _I64_MIN, dtype=np.int64)
        np.minimum.at(lo, inverse, rows.t_ms)
        np.maximum.at(hi, inverse, rows.t_ms)
        any_late = np.zeros(n, dtype=bool)
        np.logical_or.at(any_late, inverse, late)
        org = np.zeros(n, dtype=np.int16)
        org[inverse] = rows.org_id
        # Extremes per range let the rules' fast lane skip ranges that cannot change an alert.
        min_c = np.full(n, np.inf, dtype=np.float32)
        max_c = np.full(n, -np.inf, dtype=np.float32)
        np.minimum.at(min_c, inverse, rows.celsius)
        np.maximum.at(max_c, inverse, rows.celsius)
        min_rh = np.full(n, np.nan, dtype=np.float32)
        max_rh = np.full(n, np.nan, dtype=np.float32)
        np.fmin.at(min_rh, inverse, rows.rh)
        np.fmax.at(max_rh, inverse, rows.rh)
        rule_queue.enqueue_rules(
            conn,
            rule_queue.RuleWork(
                org_id=org,
                device_key=(uniq >> 32).astype(np.int32),
                shipment_key=((uniq & 0xFFFFFFFF) - 1).astype(np.int32),
                from_ms=lo,
                to_ms=hi,
                late=any_late,
                min_c=min_c,
                max_c=max_c,
                min_rh=min_rh,
                max_rh=max_rh,
            ),
        )

    def _account(
        self,
        conn: psycopg.Connection,
        known: list[_Known],
        new_b: npt.NDArray[np.bool_],
        last_seq: dict[int, int | None],
        result: GroupResult,
    ) -> None:
        """Sequence gaps, late fills and the devices' last-seen state, for the new batches
        (`last_seq` read under the device lock)."""
        per_device: dict[int, list[_Known]] = {}
        for i, k in enumerate(known):
            if new_b[i]:
                per_device.setdefault(k.device.key, []).append(k)
        gaps: list[batches.SeqGap] = []
        fill_keys: list[int] = []
        fill_seqs: list[int] = []
        keys: list[int] = []
        seen_ms: list[int] = []
        highest: list[int] = []
        offsets: list[int] = []
        for key, items in per_device.items():
            state = items[0].device
            account = account_seqs(last_seq.get(key), (k.batch.seq for k in items))
            for lo, hi in account.gaps:
                gaps.append(batches.SeqGap(state.org_id, key, lo, hi))
                log.warning(
                    "device %s skipped batches %d..%d",
                    state.mqtt_name,
                    lo,
                    hi,
                    extra={"device": state.mqtt_name, "seq": lo, "count": hi - lo + 1},
                )
            fill_keys += [key] * len(account.fills)
            fill_seqs += account.fills
            keys.append(key)
            seen_ms.append(max(k.message.received_ms for k in items))
            highest.append(account.highest)
            with self._clock_lock:
                current = self.clock.estimate(key)
            offsets.append(0 if current is None else current)
        batches.record_gaps(conn, gaps)
        batches.recover_gaps(conn, fill_keys, fill_seqs)
        device_state.update_devices(
            conn, device_keys=keys, last_seen_ms=seen_ms, last_seq=highest, clock_offset_ms=offsets
        )
        result.gaps = len(gaps)
