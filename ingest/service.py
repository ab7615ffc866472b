"""The ingest service: MQTT in (paho, QoS 1, persistent session, shared subscription), groups of
batches out to PostgreSQL, acknowledgements only after the group's commit.

Four threads, so that receiving and writing overlap and the paho loop never waits on the database:

    paho-mqtt-...   paho's network loop; on_message only appends the raw message to the inbox
    ingest-decode   takes up to `ingest_group_max_batches` messages (or what came within
                    `ingest_group_max_wait_ms`), decodes them, hands the group on with a ticket
                    (its place in receive order)
    ingest-writer-0/1
                    one transaction per group each, on connections of their own, taking groups
                    alternately, so that one group's COPY runs while the group before it commits;
                    writer 0 also polls the quarantine for devices registered since

Tickets keep the two writers in receive order (GroupOrder): a group starts its copy stage once the
group before it has its `batches` rows in, and locks its devices, commits and sends its PUBACKs
only after the group before it has done all three. Commits, sequence accounting and PUBACKs are
thus in the order the PUBLISHes arrived (MQTT 3.1.1 and 5, section 4.6), as with one writer.

The broker never has more than `receive_maximum` unacknowledged messages out to us (MQTT v5
Receive Maximum), so the inbox is bounded and a stalled database pushes back on the broker, which
keeps the messages in the session until we catch up.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from coldchain.backoff import Backoff
from coldchain.errors import ConfigurationError
from coldchain.mqtt_url import BrokerAddress
from coldchain.settings import Settings
from coldchain.wire import Topics
from ingest.core import AcceptanceBounds, Message, MessageKind, Prepared, decode_message
from ingest.group_order import GroupOrder, GroupRestart, WriteAborted
from ingest.metrics import IngestMetrics
from ingest.writer import GroupResult, GroupWriter, wall_clock_ms
from storage import dead_letters
from storage.db import connect

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 86_400
RELEASE_POLL_S = 1.0
WRITERS = 2
# Breaks a wait cycle the database cannot see (two workers' groups each holding a batch the
# other's group waits for, each group also waiting in-process for the group before it).
LOCK_TIMEOUT = "10s"
_STOP = object()


class AckObserver(Protocol):
    """Told of each QoS 1+ message as paho hands it over, and of each PUBACK as it is sent.

    Called on paho's thread and on the writer threads respectively: keep it quick. For tests and
    tracing; the service works the same without one.
    """

    def received(self, message: Message) -> None: ...

    def acknowledged(self, message: Message) -> None: ...


@dataclass(slots=True)
class IngestStats(GroupResult):
    """Running totals since start: every committed group's result added up, and what only the
    service sees (messages received, groups, database errors). `IngestService.stats` is a copy."""

    received: int = 0
    groups: int = 0
    db_errors: int = 0

    @property
    def stored(self) -> int:
        """Readings committed."""
        return self.readings

    def add(self, result: GroupResult, *, group: bool = True) -> None:
        """Count a committed group's result (`group=False`: a quarantine release, not a group)."""
        self.merge(result)
        self.groups += int(group)

    def copy(self) -> IngestStats:
        snapshot = IngestStats(**{f.name: getattr(self, f.name) for f in fields(self)})
        snapshot.reasons = self.reasons.copy()
        return snapshot


class IngestService:
    """One ingest worker. Several may run against the same broker: they share the subscription."""

    def __init__(
        self,
        *,
        dsn: str,
        mqtt_url: str,
        topics: Topics,
        settings: Settings | None = None,
        client_id: str | None = None,
        metrics_port: int | None = None,
        receive_maximum: int | None = None,
        writer: GroupWriter | None = None,
        ack_observer: AckObserver | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.dsn = dsn
        self.broker = BrokerAddress.parse(mqtt_url)
        self.topics = topics
        self.client_id = client_id or f"coldchain-ingest-{socket.gethostname()}"
        self.metrics_port = metrics_port
        self.limits = AcceptanceBounds.from_settings(self.settings)
        self.group_max = max(1, self.settings.ingest_group_max_batches)
        self.group_wait_s = max(0, self.settings.ingest_group_max_wait_ms) / 1000
        # A group per writer in flight, one waiting for a writer and one arriving.
        self.receive_maximum = min(
            65_535, receive_maximum or max(100, (WRITERS + 2) * self.group_max)
        )
        self.metrics = IngestMetrics()
        self._writer = writer or GroupWriter(limits=self.limits)
        self._ack_observer = ack_observer
        self._stats = IngestStats()
        self._stats_lock = threading.Lock()
        self._inbox: queue.Queue[Message] = queue.Queue(maxsize=2 * self.receive_maximum + 1000)
        self._groups: queue.Queue[Any] = queue.Queue(maxsize=WRITERS)
        self.order = GroupOrder()
        self._ack_lock = threading.Lock()
        self._generation = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._client: mqtt.Client | None = None
        self._conns: list[psycopg.Connection | None] = [None] * WRITERS
        self._threads: list[threading.Thread] = []
        self._first_receive = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def stats(self) -> IngestStats:
        with self._stats_lock:
            return self._stats.copy()

    def start(self) -> IngestService:
        """Connect and start the threads; returns at once (see wait_ready)."""
        if self._threads:
            raise RuntimeError("ingest service already started")
        if self.metrics_port is not None:
            self.metrics.serve(self.metrics_port)
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set()
        # Reconnect quickly: Mosquitto (2.0.x) does not restore shared subscriptions from its
        # persistence file, so after a broker restart readings published before the first worker
        # has subscribed again have no subscriber (docs/ingest.md, "Broker restarts").
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.receive_maximum
        client.connect_async(
            self.broker.host, self.broker.port, keepalive=30, clean_start=False, properties=props
        )
        self._client = client
        self._threads = [
            threading.Thread(target=self._decode_loop, name="ingest-decode", daemon=True),
            *(
                threading.Thread(
                    target=self._write_loop, args=(slot,), name=f"ingest-writer-{slot}", daemon=True
                )
                for slot in range(WRITERS)
            ),
        ]
        for thread in self._threads:
            thread.start()
        # paho's own thread (named paho-mqtt-client-<id>): paho only treats acks sent from other
        # threads as thread-safe when it runs the loop itself.
        client.loop_start()
        log.info(
            "ingest %s started on %s, topics %s", self.client_id, self.broker.display(),
            self.topics.shared_readings(),
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the subscriptions are in place (True) or the timeout passes (False)."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: write and acknowledge what was received, then disconnect (the session stays)."""
        if not self._threads:
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            log.warning(
                "ingest did not drain within %.0f s; unacknowledged messages stay with the broker",
                timeout,
            )
            self._abort.set()
            for thread in self._threads:
                thread.join(5)
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._threads = []
        for slot in range(WRITERS):
            self._drop_connection(slot)
        self.metrics.close()
        log.info("ingest %s stopped", self.client_id, extra={"count": self.stats.stored})

    def __enter__(self) -> IngestService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ MQTT callbacks (paho thread)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
        reason: ReasonCode, properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        with self._ack_lock:
            self._generation += 1
        log.info("connected to %s (session present: %s)", self.broker.display(), flags.session_present)
        client.subscribe(
            [
                (self.topics.shared_readings(), SubscribeOptions(qos=1)),
                (self.topics.all_status, SubscribeOptions(qos=1)),
            ]
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
        reason: ReasonCode, properties: Properties | None,
    ) -> None:
        # Acks of messages received on the lost connection must not go out on the next one: the
        # broker redelivers those messages, maybe under packet ids reused since.
        with self._ack_lock:
            self._generation += 1
        if not self._stopping.is_set():
            log.warning("lost the broker (%s); reconnecting", reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int,
        reasons: list[ReasonCode], properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("subscription refused: %s", [str(r) for r in reasons])
            return
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
            kind: MessageKind = "status" if topic.endswith("/status") else "readings"
            message = Message(
                topic=topic, payload=bytes(msg.payload), received_ms=wall_clock_ms(),
                kind=kind, mid=msg.mid, qos=msg.qos, generation=self._generation,
            )
            if self._ack_observer is not None and msg.qos > 0:
                self._ack_observer.received(message)
            self._inbox.put(message)
            if not self._first_receive:
                self._first_receive = True
                self.metrics.first_receive.set(time.time())
        except Exception:  # never let a callback error stop paho's loop
            log.exception("could not take a message in")

    # ------------------------------------------------------------------ decode stage

    def _decode_loop(self) -> None:
        inbox = self._inbox
        ticket = 0
        while True:
            try:
                first = inbox.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            group = [first]
            deadline = time.monotonic() + self.group_wait_s
            while len(group) < self.group_max:
                try:
                    group.append(inbox.get_nowait())
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stopping.is_set():
                        break
                    try:
                        group.append(inbox.get(timeout=remaining))
                    except queue.Empty:
                        break
            with self._stats_lock:
                self._stats.received += len(group)
            self.metrics.queue_depth.set(inbox.qsize())
            prepared = [
                Prepared(m, decode_message(m, topics=self.topics, limits=self.limits)) for m in group
            ]
            for m in group:
                self.metrics.messages.labels(m.kind).inc()
            self._put_group((ticket, prepared))
            ticket += 1
        for _ in range(WRITERS):
            self._put_group(_STOP)

    def _put_group(self, item: Any) -> None:
        while True:
            try:
                self._groups.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._abort.is_set():
                    return

    # ------------------------------------------------------------------ write stage

    def _write_loop(self, slot: int) -> None:
        next_release = time.monotonic()
        while not self._abort.is_set():
            try:
                item = self._groups.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            try:
                if item is not None:
                    ticket, group = item
                    self._commit(slot, ticket, group)
                if slot == 0 and time.monotonic() >= next_release and not self._stopping.is_set():
                    next_release = time.monotonic() + RELEASE_POLL_S
                    self._release_held(slot)
            except WriteAborted:
                break

    def _connection(self, slot: int) -> psycopg.Connection:
        """A writer's connection, reopened with jittered backoff after a failure."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        while (conn := self._conns[slot]) is None or conn.closed:
            try:
                conn = connect(self.dsn)
                self._conns[slot] = conn
                conn.execute("SET synchronous_commit = on")
                conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
                conn.commit()
            except psycopg.OperationalError as exc:
                self._drop_connection(slot)
                if self._abort.is_set():
                    raise WriteAborted from exc
                delay = backoff.next()
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
        return conn

    def _drop_connection(self, slot: int) -> None:
        conn, self._conns[slot] = self._conns[slot], None
        if conn is not None:
            conn.close()

    def _write_in_turn(
        self, conn: psycopg.Connection, ticket: int, group: Sequence[Prepared]
    ) -> GroupResult:
        """The group's transaction: copy stage, then (in turn) accounting and commit."""
        order = self.order
        with conn.transaction():
            staged = self._writer.prepare(conn, group, on_deduped=lambda: order.deduped(ticket))
            order.wait_turn(ticket, abort=self._abort)
            return self._writer.finish(conn, staged)

    def _commit(self, slot: int, ticket: int, group: Sequence[Prepared]) -> None:
        started = time.monotonic()
        backoff = Backoff(initial=0.2, maximum=5.0)
        overlap = True
        order = self.order
        while True:
            try:
                conn = self._connection(slot)
                order.wait_start(ticket, overlap=overlap, abort=self._abort)
                try:
                    result = self._write_in_turn(conn, ticket, group)
                except (psycopg.OperationalError, GroupRestart, WriteAborted):
                    raise
                except Exception as exc:  # a poison message: find it, store it as a dead letter
                    order.failed(ticket)
                    log.warning("group of %d failed (%s); storing one by one", len(group), exc)
                    order.wait_turn(ticket, abort=self._abort)
                    result = self._one_by_one(conn, group)
                break
            except GroupRestart:
                order.failed(ticket)
                overlap = False
            except psycopg.OperationalError as exc:
                order.failed(ticket)
                overlap = False
                self._drop_connection(slot)
                with self._stats_lock:
                    self._stats.db_errors += 1
                self.metrics.db_errors.inc()
                if self._abort.is_set():
                    raise WriteAborted from exc  # not acknowledged: the broker keeps the messages
                delay = backoff.next()
                log.warning("database error (%s); retrying the group in %.1f s", exc, delay)
                time.sleep(delay)
        self._ack(group)
        order.done(ticket)
        elapsed = time.monotonic() - started
        oldest = min((p.message.received_ms for p in group), default=wall_clock_ms())
        self.metrics.observe(result, seconds=elapsed, lag_s=(wall_clock_ms() - oldest) / 1000)
        if result.readings:
            self.metrics.last_commit.set(time.time())
        with self._stats_lock:
            self._stats.add(result)
        log.debug(
            "group committed: %d messages, %d readings, %d duplicates, %d dead letters",
            result.messages, result.readings, result.duplicates, result.dead_letters,
        )

    def _one_by_one(self, conn: psycopg.Connection, group: Sequence[Prepared]) -> GroupResult:
        total = GroupResult()
        for item in group:
            try:
                one = self._writer.write(conn, [item])
            except psycopg.OperationalError:
                raise
            except Exception as exc:
                log.error(
                    "message on %s cannot be stored: %s", item.message.topic, exc,
                    extra={"reason": "store_failed"},
                )
                one = self._writer.dead_letter_only(
                    conn, item, reason="store_failed", detail=f"{type(exc).__name__}: {exc}"[:500]
                )
            total.merge(one)
        return total

    def _ack(self, group: Sequence[Prepared]) -> None:
        client = self._client
        if client is None:
            return
        with self._ack_lock:
            generation = self._generation
            for item in group:
                m = item.message
                if m.held_id is None and m.qos > 0 and m.generation == generation:
                    client.ack(m.mid, m.qos)
                    if self._ack_observer is not None:
                        self._ack_observer.acknowledged(m)

    def _release_held(self, slot: int) -> None:
        """Move batches held for devices that are registered now through the normal write path.

        Out of turn: it sends no acknowledgement, and it waits in-process for nothing, so the
        groups it may wait on (a batch both hold) never wait for it in return."""
        try:
            conn = self._connection(slot)
            with conn.transaction():
                held = dead_letters.take_releasable(conn)
                if not held:
                    return
                group = [
                    Prepared(m, decode_message(m, topics=self.topics, limits=self.limits))
                    for m in (
                        Message(topic=h.topic, payload=h.payload, received_ms=h.received_ms, held_id=h.id)
                        for h in held
                    )
                ]
                result = self._writer.write(conn, group)
            log.info("released %d held batches", result.released, extra={"count": result.released})
            with self._stats_lock:
                self._stats.add(result, group=False)
            self.metrics.observe(result, seconds=0.0, lag_s=0.0)
        except WriteAborted:
            raise
        except psycopg.OperationalError as exc:
            self._drop_connection(slot)
            log.warning("quarantine release postponed: %s", exc)
        except Exception:
            log.exception("quarantine release failed")
            self._drop_connection(slot)


def run(settings: Settings, stop: threading.Event) -> None:
    """Run one ingest worker until `stop` is set (the `coldchain ingest` command)."""
    if not settings.database_url or not settings.mqtt_url:
        raise ConfigurationError("ingest needs DATABASE_URL and MQTT_URL")
    service = IngestService(
        dsn=settings.database_url,
        mqtt_url=settings.mqtt_url,
        topics=Topics(prefix=settings.topic_prefix),
        settings=settings,
        metrics_port=settings.ingest_metrics_port,
    )
    with service:
        stop.wait()
