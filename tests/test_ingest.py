"""Ingest against a real Mosquitto and PostgreSQL: linking, dedupe, dead letters, quarantine,
sequence gaps, clock correction, late batches, device status and the rules queue."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest

from coldchain.domain import Device, ReadingBatch
from coldchain.settings import Settings
from coldchain.wire import DeviceStatus, Topics, encode_binary, encode_json
from ingest import IngestService
from ingest.core import AcceptanceBounds, Message, Prepared, decode_message
from ingest.writer import GroupWriter
from storage import auth, batches, dead_letters, registry
from storage.readings import FLAG_CLOCK_CORRECTED, FLAG_DOOR_OPEN, FLAG_LATE
from tests.support.contract import CONTRACT_EXAMPLE
from tests.support.ingest import (
    GTIN,
    Publisher,
    make_batch,
    now_ms,
    publish_load,
    register,
    scalar,
    wait_until,
)


@pytest.fixture
def service(db_dsn: str, mqtt_url: str, topics: Topics) -> Iterator[IngestService]:
    settings = Settings(ingest_group_max_wait_ms=20)
    svc = IngestService(
        dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=settings,
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
    )
    svc.start()
    assert svc.wait_ready(30)
    yield svc
    svc.stop()


@pytest.fixture
def pub(mqtt_url: str) -> Iterator[Publisher]:
    with Publisher(mqtt_url) as p:
        yield p


def _wait_count(db: psycopg.Connection, sql: str, expected: int) -> int:
    wait_until(lambda: scalar(db, sql) >= expected, timeout=30)
    return scalar(db, sql)


def test_contract_example_lands_linked_to_shipment_and_lot(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["TRK-0042-L1"], since=datetime(2026, 11, 24, 8, tzinfo=UTC))
    pub.publish(topics.readings("TRK-0042-L1"), CONTRACT_EXAMPLE)
    assert _wait_count(db, "SELECT count(*) FROM readings", 2) == 2
    rows = db.execute(
        "SELECT s.id, sl.gtin, sl.lot, r.t, r.c, r.rh, r.seq FROM readings r"
        " JOIN shipments s ON s.key = r.shipment_key"
        " JOIN shipment_lots sl ON sl.shipment_key = s.key ORDER BY r.t"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("SO-1001", GTIN, "A123")] * 2
    assert rows[0][3] == datetime(2026, 11, 24, 10, 14, tzinfo=UTC)
    assert rows[1][3] == datetime(2026, 11, 24, 10, 15, tzinfo=UTC)
    assert [round(r[4], 2) for r in rows] == [4.6, 4.7]
    assert rows[0][5] == pytest.approx(61.2, abs=1e-4) and rows[1][5] is None
    assert {r[6] for r in rows} == {1187}
    device = db.execute("SELECT last_seq, last_seen_at FROM devices WHERE id = 'TRK-0042-L1'").fetchone()
    assert device is not None and device[0] == 1187 and device[1] is not None
    # the rules engine is told, in the same transaction
    work = db.execute("SELECT from_t, to_t, late FROM rule_queue").fetchall()
    assert work == [(rows[0][3], rows[1][3], True)]  # a day old on arrival: late


def test_same_batch_twice_is_stored_once(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"])
    batch = make_batch("D1", 7, n=25)
    pub.publish(topics.readings("D1"), encode_binary(batch))
    pub.publish(topics.readings("D1"), encode_json(batch))  # same batch, other form
    pub.publish(topics.readings("D1"), encode_binary(batch))
    assert wait_until(lambda: service.stats.batches + service.stats.duplicates >= 3)
    assert scalar(db, "SELECT count(*) FROM readings") == 25
    assert scalar(db, "SELECT count(*) FROM batches") == 1
    assert service.stats.duplicates == 2
    assert service.stats.stored == 25


def test_malformed_payload_is_a_dead_letter_and_ingest_goes_on(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"])
    pub.publish(topics.readings("D1"), b"{not json")
    pub.publish(topics.readings("D1"), b"CCB\x01\x00\x02D1")  # truncated binary
    pub.publish(topics.readings("D1"), encode_json(make_batch("D2", 1)))  # topic/payload mismatch
    pub.publish(topics.readings("D1"), b"\x00" * 2_000_000)  # oversize
    pub.publish(topics.readings("D1"), encode_binary(make_batch("D1", 1, n=5)))
    assert _wait_count(db, "SELECT count(*) FROM dead_letters", 4) == 4
    assert _wait_count(db, "SELECT count(*) FROM readings", 5) == 5
    reasons = dict(db.execute("SELECT reason, payload_size FROM dead_letters").fetchall())
    assert set(reasons) == {"bad_json", "truncated", "device_mismatch", "oversize"}
    assert reasons["oversize"] == 2_000_000
    stored = db.execute("SELECT max(length(payload)) FROM dead_letters").fetchone()
    assert stored is not None and stored[0] <= 4096  # bounded raw bytes
    dev = db.execute(
        "SELECT dead_letter_count, last_dead_letter_reason FROM devices WHERE id = 'D1'"
    ).fetchone()
    assert dev is not None and dev[0] == 4  # the device's status shows it


def test_bad_readings_are_dead_letters_and_the_rest_is_stored(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"])
    doc = {
        "v": 1, "device": "D1", "seq": 1, "sent": now_ms(),
        "readings": [
            {"t": now_ms() - 3000, "c": 4.0},
            {"t": now_ms() - 2000, "c": 400.0},  # physically impossible
            {"t": now_ms() - 1000, "c": 5.0, "rh": 140.0},  # humidity out of range
            {"t": now_ms() + 86_400_000, "c": 5.0},  # a day in the future
            {"t": now_ms() - 900 * 86_400_000, "c": 5.0},  # far in the past
            {"t": now_ms() - 500, "c": 6.0, "door": "open"},
        ],
    }
    pub.publish(topics.readings("D1"), orjson.dumps(doc))
    assert _wait_count(db, "SELECT count(*) FROM readings", 2) == 2
    # one dead letter per refused kind, naming the readings
    reasons = sorted(r[0] for r in db.execute("SELECT reason FROM dead_letters"))
    assert reasons == ["future_time", "out_of_range", "past_time"]
    detail = scalar(db, "SELECT count(*) FROM dead_letters WHERE detail LIKE '2 of 6 readings%%'")
    assert detail == 1
    rows = db.execute("SELECT c, flags FROM readings ORDER BY t").fetchall()
    assert [(round(c, 1), f & FLAG_DOOR_OPEN) for c, f in rows] == [(4.0, 0), (6.0, FLAG_DOOR_OPEN)]
    extras = db.execute("SELECT extras, readings FROM batches").fetchone()
    assert extras is not None and extras[0][5] == {"door": "open"} and extras[1] == 2


def test_nan_and_inf_readings_refused(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"])
    batch = make_batch("D1", 1, n=4)
    batch.celsius[1] = float("nan")
    batch.celsius[2] = float("inf")
    pub.publish(topics.readings("D1"), encode_binary(batch))
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == 2)
    letter = db.execute("SELECT reason, detail FROM dead_letters").fetchone()
    assert letter is not None and letter[0] == "not_finite" and "2 of 4" in letter[1]


def test_unknown_device_is_quarantined_then_released(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    for seq in (1, 2, 3):
        pub.publish(topics.readings("NEW-1"), encode_binary(make_batch("NEW-1", seq, n=10)))
    assert wait_until(lambda: dead_letters.held_count(db, "NEW-1") == 3)
    assert scalar(db, "SELECT count(*) FROM readings") == 0
    register(db, ["NEW-1"])
    assert dead_letters.held_count(db, "NEW-1") == 3
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == 30)
    assert dead_letters.held_count(db, "NEW-1") == 0
    assert scalar(db, "SELECT count(*) FROM readings WHERE shipment_key IS NOT NULL") == 30
    # The service counts a release after its transaction commits: the readings can show first.
    assert wait_until(lambda: service.stats.released == 3)


def test_two_organizations_loggers_of_one_id_stay_apart(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    """Device ids are unique per organization: the default organization's TRK-1 publishes as
    `TRK-1`, Acme's as `acme~TRK-1`; each batch lands on its own organization's logger, and a
    batch of Acme's unregistered TRK-2 waits for Acme's registration, not the default's."""
    acme = auth.create_organization(db, "acme", "Acme Logistics")
    register(db, ["TRK-1"], shipment=None)
    registry.create_device(db, org=acme, device=Device(id="TRK-1"), actor="test")
    pub.publish(topics.readings("TRK-1"), encode_binary(make_batch("TRK-1", 1, n=10)))
    pub.publish(topics.readings("acme~TRK-1"), encode_binary(make_batch("acme~TRK-1", 1, n=7)))
    pub.publish(topics.readings("acme~TRK-2"), encode_binary(make_batch("acme~TRK-2", 1, n=5)))
    pub.publish(topics.status("acme~TRK-1"), DeviceStatus(state="online", battery=0.5).encode())
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == 17)
    per_org = dict(db.execute(
        "SELECT d.org_id, count(*) FROM readings r JOIN devices d ON d.key = r.device_key GROUP BY 1"
    ).fetchall())
    assert per_org == {1: 10, acme: 7}
    assert wait_until(lambda: scalar(
        db, "SELECT count(*) FROM devices WHERE org_id = %s AND status->>'state' = 'online'", (acme,)
    ) == 1)
    assert scalar(db, "SELECT count(*) FROM devices WHERE org_id = 1 AND status IS NOT NULL") == 0
    assert dead_letters.held_count(db, "acme~TRK-2") == 1
    register(db, ["TRK-2"], shipment=None)  # the default organization's TRK-2 is another logger
    time.sleep(0.5)
    assert dead_letters.held_count(db, "acme~TRK-2") == 1
    registry.create_device(db, org=acme, device=Device(id="TRK-2"), actor="test")
    assert wait_until(lambda: dead_letters.held_count(db, "acme~TRK-2") == 0)
    assert wait_until(lambda: scalar(
        db, "SELECT count(*) FROM readings r JOIN devices d ON d.key = r.device_key"
        " WHERE d.org_id = %s AND d.id = 'TRK-2'", (acme,)
    ) == 5)


def test_seq_gap_is_a_data_loss_event_and_late_fill_resolves_it(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"])
    topic = topics.readings("D1")
    pub.publish(topic, encode_binary(make_batch("D1", 1)))
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM batches") == 1)
    pub.publish(topic, encode_binary(make_batch("D1", 5)))
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM data_loss_events") == 1)
    key = scalar(db, "SELECT key FROM devices WHERE id = 'D1'")
    assert batches.open_data_loss(db, key) == [(2, 4, 3, 0)]
    pub.publish(topic, encode_binary(make_batch("D1", 3)))
    assert wait_until(lambda: batches.open_data_loss(db, key) == [(2, 4, 3, 1)])
    late = db.execute("SELECT late FROM batches WHERE seq = 3").fetchone()
    assert late is not None and late[0] is True
    flags = scalar(db, "SELECT bit_or(flags) FROM readings WHERE seq = 3")
    assert flags & FLAG_LATE
    assert scalar(db, "SELECT count(*) FROM rule_queue WHERE late") == 1
    pub.publish(topic, encode_binary(make_batch("D1", 2)))
    pub.publish(topic, encode_binary(make_batch("D1", 4)))
    assert wait_until(lambda: batches.open_data_loss(db, key) == [])
    assert scalar(db, "SELECT count(*) FROM data_loss_events WHERE resolved_at IS NOT NULL") == 1


def test_clock_ahead_is_corrected_and_both_times_kept(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"])
    ahead = 3_600_000
    batch = make_batch("D1", 1, n=5, start_ms=now_ms() + ahead - 5000, step_ms=1000,
                       sent_ms=now_ms() + ahead)
    pub.publish(topics.readings("D1"), encode_binary(batch))
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == 5)
    offset = scalar(db, "SELECT clock_offset_ms FROM batches")
    assert -ahead - 60_000 < offset < -ahead + 60_000
    assert scalar(db, "SELECT count(*) FROM readings WHERE flags & %s <> 0", (FLAG_CLOCK_CORRECTED,)) == 5
    # the device's own clock is t - clock_offset_ms
    device_t = db.execute(
        "SELECT min((extract(epoch FROM r.t) * 1000)::bigint - b.clock_offset_ms) FROM readings r"
        " JOIN batches b USING (device_key, seq)"
    ).fetchone()
    assert device_t is not None and device_t[0] == int(batch.t_ms[0])


def test_status_topic_updates_device(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"], shipment=None)
    status = DeviceStatus(state="online", battery=0.87, queue=12, fw="1.2.0")
    pub.publish(topics.status("D1"), status.encode(), retain=True)
    assert wait_until(
        lambda: db.execute("SELECT status FROM devices WHERE id = 'D1'").fetchone() != (None,)
    )
    row = db.execute("SELECT status FROM devices WHERE id = 'D1'").fetchone()
    assert row is not None and row[0] == {"state": "online", "battery": 0.87, "queue": 12, "fw": "1.2.0"}
    pub.publish(topics.status("D1"), b"", retain=True)  # clear the retained message


def test_readings_off_shipment_are_stored_unlinked(
    db: psycopg.Connection, service: IngestService, pub: Publisher, topics: Topics
) -> None:
    register(db, ["D1"], shipment=None)
    pub.publish(topics.readings("D1"), encode_binary(make_batch("D1", 1, n=3)))
    assert wait_until(lambda: scalar(db, "SELECT count(*) FROM readings") == 3)
    assert scalar(db, "SELECT count(*) FROM readings WHERE shipment_key IS NULL") == 3
    assert scalar(db, "SELECT count(*) FROM rule_queue WHERE shipment_key IS NULL") == 1


def test_stop_drains_and_acknowledges(db_dsn: str, db: psycopg.Connection, mqtt_url: str,
                                      topics: Topics) -> None:
    register(db, ["D1", "D2"])
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    settings = Settings(ingest_group_max_wait_ms=20)
    with Publisher(mqtt_url) as pub:
        with IngestService(dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=settings,
                           client_id=client_id) as svc:
            assert svc.wait_ready(30)
            for seq in range(1, 201):
                for d in ("D1", "D2"):
                    pub.publish(topics.readings(d), encode_binary(make_batch(d, seq, n=5)))
            assert pub.wait_all_acked(400)
        first = svc.stats
        # whatever was not drained is redelivered to the same session on the next start
        with IngestService(dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=settings,
                           client_id=client_id) as svc2:
            assert svc2.wait_ready(30)
            assert wait_until(lambda: scalar(db, "SELECT count(*) FROM batches") == 400)
    assert scalar(db, "SELECT count(*) FROM readings") == 2000
    assert first.stored + svc2.stats.stored == 2000


def _prepared(batch: ReadingBatch, topics: Topics) -> Prepared:
    m = Message(topic=topics.readings(batch.device), payload=encode_binary(batch), received_ms=now_ms())
    return Prepared(m, decode_message(m, topics=topics, limits=AcceptanceBounds()))


def test_overlapping_groups_settle_late_flags_and_gaps_under_the_lock(
    db_dsn: str, db: psycopg.Connection, topics: Topics
) -> None:
    """A group whose copy stage ran before the group ahead of it committed newer batches of the
    same device: its batch turns late under the device lock (batches row, readings, rules queue)
    and fills the gap the other group saw, exactly as if it had arrived after it."""
    register(db, ["D1"])
    writer = GroupWriter(limits=AcceptanceBounds())
    with psycopg.connect(db_dsn, autocommit=True) as a, psycopg.connect(db_dsn, autocommit=True) as b:
        writer.write(a, [_prepared(make_batch("D1", 1, n=5), topics)])
        with b.transaction():
            staged = writer.prepare(b, [_prepared(make_batch("D1", 2, n=5), topics)])
            writer.write(a, [_prepared(make_batch("D1", 3, n=5), topics)])  # commits first
            result = writer.finish(b, staged)
    assert result.late_batches == 1 and result.gaps == 0 and result.batches == 1
    assert scalar(db, "SELECT count(*) FROM batches WHERE late") == 1
    assert scalar(db, "SELECT count(*) FROM readings WHERE seq = 2 AND flags & %s <> 0", (FLAG_LATE,)) == 5
    assert scalar(db, "SELECT count(*) FROM readings WHERE seq <> 2 AND flags & %s <> 0", (FLAG_LATE,)) == 0
    assert scalar(db, "SELECT count(*) FROM rule_queue WHERE late") == 1
    assert scalar(db, "SELECT count(*) FROM data_loss_events WHERE resolved_at IS NOT NULL") == 1
    assert batches.open_data_loss(db, scalar(db, "SELECT key FROM devices WHERE id = 'D1'")) == []
    assert scalar(db, "SELECT last_seq FROM devices WHERE id = 'D1'") == 3


def test_a_batch_in_two_concurrent_groups_is_stored_once(
    db_dsn: str, db: psycopg.Connection, topics: Topics
) -> None:
    register(db, ["D1"])
    writer = GroupWriter(limits=AcceptanceBounds())
    second: list[int] = []
    with psycopg.connect(db_dsn, autocommit=True) as a, psycopg.connect(db_dsn, autocommit=True) as b:
        with a.transaction():
            staged = writer.prepare(a, [_prepared(make_batch("D1", 5, n=5), topics)])
            # the other transaction waits on the batch key, then skips the batch
            other = threading.Thread(
                target=lambda: second.append(
                    writer.write(b, [_prepared(make_batch("D1", 5, n=5), topics)]).duplicates
                )
            )
            other.start()
            other.join(0.5)
            assert other.is_alive()
            first = writer.finish(a, staged)
        other.join(30)
    assert first.batches == 1 and second == [1]
    assert scalar(db, "SELECT count(*) FROM readings") == 5
    assert scalar(db, "SELECT count(*) FROM rule_queue") == 1


class _AckRecorder:
    """Records the order messages came in and the order their PUBACKs went out."""

    def __init__(self) -> None:
        self.received_mids: list[int] = []
        self.acked_mids: list[int] = []
        self.ack_threads: set[str] = set()

    def received(self, message: Message) -> None:
        self.received_mids.append(message.mid)

    def acknowledged(self, message: Message) -> None:
        self.acked_mids.append(message.mid)
        self.ack_threads.add(threading.current_thread().name)


class _LingeringWriter(GroupWriter):
    """One writer lingers before it commits, so the other would overtake it if it could."""

    def finish(self, conn: psycopg.Connection, staged: Any) -> Any:
        if threading.current_thread().name == "ingest-writer-0":
            time.sleep(0.05)
        return super().finish(conn, staged)


def test_acks_leave_in_receive_order_with_two_writers(
    db_dsn: str, db: psycopg.Connection, mqtt_url: str, topics: Topics
) -> None:
    devices = [f"D{i}" for i in range(10)]
    register(db, devices)
    settings = Settings(ingest_group_max_wait_ms=5, ingest_group_max_batches=20)
    acks = _AckRecorder()
    with Publisher(mqtt_url) as pub, IngestService(
        dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=settings,
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        writer=_LingeringWriter(limits=AcceptanceBounds.from_settings(settings)), ack_observer=acks,
    ) as svc:
        assert svc.wait_ready(30)
        publish_load(pub, topics, devices, 100, readings=5)
        assert pub.wait_all_acked(1000)
        assert wait_until(lambda: len(acks.acked_mids) >= 1000)
        assert acks.acked_mids == acks.received_mids  # MQTT 3.1.1 / 5, section 4.6
        assert acks.ack_threads == {"ingest-writer-0", "ingest-writer-1"}
    assert scalar(db, "SELECT count(*) FROM readings") == 5000
    assert scalar(db, "SELECT count(*) FROM data_loss_events") == 0
