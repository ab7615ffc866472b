"""The MQTT side of one device: send the outbox's batches with QoS 1, keep a retained status with
a last will, listen to the retained config, reconnect with jittered exponential backoff.

One connection per device, so every device logs in with its own credentials (username/password
or a client certificate) and the broker's ACL can pin it to its own topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho

from coldchain.backoff import Backoff
from coldchain.mqtt_url import BrokerAddress
from coldchain.wire import OFFLINE_STATUS, DeviceConfig, DeviceStatus, Topics
from gateway_agent.clock import Clock
from gateway_agent.config import AgentSettings, DeviceSettings
from gateway_agent.errors import PublishRefusedError
from gateway_agent.outbox import Outbox, PendingBatch

log = logging.getLogger(__name__)

_PUBLISH_TIMEOUT_S = 30.0


class AckingClient(aiomqtt.Client):
    """aiomqtt's client, plus a publish that returns only after a *successful* PUBACK.

    aiomqtt's own publish resolves on any PUBACK and drops its reason code; an outbox must not
    forget a batch the broker refused (MQTT v5 answers 0x87 "not authorized" when an ACL denies
    the topic), so `publish_acked` raises PublishRefusedError on a failure reason code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reasons: dict[int, Any] = {}
        # The in-flight window is bounded by the caller; aiomqtt would log every call above 10.
        self.pending_calls_threshold = 1 << 16

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._reasons[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        timeout: float = _PUBLISH_TIMEOUT_S,
    ) -> None:
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._wait_for(confirmation.wait(), timeout=timeout)
            reason = self._reasons.pop(info.mid, None)
        finally:
            self._reasons.pop(info.mid, None)
        if reason is not None and getattr(reason, "is_failure", False):
            raise PublishRefusedError(
                f"broker refused the publish: {reason}",
                topic=topic,
                reason_code=int(reason.value),
            )


def backoff_delays(
    minimum: float, maximum: float, *, rng: random.Random | None = None
) -> Callable[[int], float]:
    """Attempt n -> a delay: exponential from `minimum` to `maximum`, half of it jittered."""
    return Backoff(initial=minimum, maximum=maximum, jitter=0.5, rng=rng or random.Random()).delay


class _Stopping(Exception):
    """Raised inside a session's task group to unwind it on a clean stop."""


@dataclass
class LinkState:
    connected: bool = False
    last_contact_ms: int | None = None
    applied_config: int | None = None
    refused: int = 0
    sent: int = 0


class DevicePublisher:
    """Drains one device's batches from the outbox to the broker, forever (until `stop`)."""

    def __init__(
        self,
        *,
        device: DeviceSettings,
        settings: AgentSettings,
        outbox: Outbox,
        clock: Clock,
        on_config: Callable[[str, DeviceConfig], None] | None = None,
        status_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        if settings.mqtt_url is None:
            raise ValueError("a publisher needs settings.mqtt_url")
        self.device = device
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.topics = Topics(prefix=settings.topic_prefix)
        self.address = BrokerAddress.parse(settings.mqtt_url)
        self.on_config = on_config
        self.status_extra = status_extra
        self.link = LinkState()
        self.wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._delay = backoff_delays(settings.reconnect_min_s, settings.reconnect_max_s)
        self._form: Literal["binary", "json"] = "binary" if settings.payload == "binary" else "json"
        self._acked: list[int] = []

    def stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ connection

    def _client(self) -> AckingClient:
        tls_params = None
        if self.address.tls or self.device.cert_file is not None:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(self.settings.ca_file) if self.settings.ca_file else None,
                certfile=str(self.device.cert_file) if self.device.cert_file else None,
                keyfile=str(self.device.key_file) if self.device.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return AckingClient(
            self.address.host,
            self.address.port,
            username=self.device.username or self.address.username,
            password=self.device.secret() or self.address.password,
            identifier=f"gw-{self.device.id}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(
                self.topics.status(self.device.id), OFFLINE_STATUS, qos=1, retain=True
            ),
            tls_params=tls_params,
            timeout=self.settings.connect_timeout_s,
            keepalive=30,
            max_inflight_messages=self.settings.max_inflight,
        )

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                async with self._client() as client:
                    attempt = 0
                    self.link.connected = True
                    self.link.last_contact_ms = self.clock.now_ms()
                    log.info("device %s connected to %s", self.device.id, self.address.display())
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                log.warning("device %s: MQTT link lost (%s)", self.device.id, group.exceptions[0])
            except* PublishRefusedError as group:
                self.link.refused += 1
                log.error("device %s: %s", self.device.id, group.exceptions[0])
            finally:
                self.link.connected = False
                self._commit_acks()
            if self._stopping.is_set():
                break
            delay = self._delay(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _session(self, client: AckingClient) -> None:
        await client.publish_acked(
            self.topics.status(self.device.id), self._status("online"), retain=True
        )
        await client.subscribe(self.topics.config(self.device.id), qos=1)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._flush(client, tg), name=f"flush-{self.device.id}")
                tg.create_task(self._heartbeat(client), name=f"heartbeat-{self.device.id}")
                tg.create_task(self._configs(client), name=f"config-{self.device.id}")
                tg.create_task(self._watch_stop(), name=f"stop-{self.device.id}")
        except* _Stopping:
            self._commit_acks()
            with contextlib.suppress(aiomqtt.MqttError, PublishRefusedError, TimeoutError):
                await client.publish_acked(
                    self.topics.status(self.device.id), OFFLINE_STATUS, retain=True, timeout=3
                )

    async def _watch_stop(self) -> None:
        await self._stopping.wait()
        raise _Stopping

    # ------------------------------------------------------------------ batches

    async def _flush(self, client: AckingClient, tg: asyncio.TaskGroup) -> None:
        window = asyncio.Semaphore(self.settings.max_inflight)
        topic = self.topics.readings(self.device.id)
        after_id = 0
        while True:
            self._commit_acks()
            batches = self.outbox.pending(
                self.device.id, after_id=after_id, limit=self.settings.max_inflight
            )
            if not batches:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=0.05 if self._acked else 2.0)
                continue
            for batch in batches:
                await window.acquire()
                tg.create_task(self._send(client, topic, batch, window))
                after_id = batch.id

    async def _send(
        self, client: AckingClient, topic: str, batch: PendingBatch, window: asyncio.Semaphore
    ) -> None:
        try:
            payload = batch.payload(self.clock.now_ms(), form=self._form)
            await client.publish_acked(topic, payload)
            self._acked.append(batch.id)
            self.link.sent += 1
        finally:
            window.release()
        if len(self._acked) >= 64:
            self._commit_acks()

    def _commit_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            now = self.clock.now_ms()
            self.outbox.acknowledge(ids, now_ms=now)
            self.link.last_contact_ms = now

    # ------------------------------------------------------------------ status and config

    def _status(self, state: str) -> bytes:
        extra = self.status_extra() if self.status_extra else {}
        return DeviceStatus(
            state=state,
            battery=extra.get("battery"),
            queue=self.outbox.depth(self.device.id).readings,
            fw=self.settings.fw,
            signal_dbm=extra.get("signal_dbm"),
            applied_config=self.link.applied_config,
            started_ms=self.outbox.logger_started_ms(self.device.id),
        ).encode()

    async def _heartbeat(self, client: AckingClient) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await client.publish_acked(
                self.topics.status(self.device.id), self._status("online"), retain=True
            )
            self.link.last_contact_ms = self.clock.now_ms()

    async def _configs(self, client: AckingClient) -> None:
        topic = self.topics.config(self.device.id)
        async for message in client.messages:
            if str(message.topic) != topic or not isinstance(message.payload, bytes | bytearray):
                continue
            if not message.payload:
                continue
            try:
                config = DeviceConfig.decode(bytes(message.payload))
                if self.on_config is not None:
                    self.on_config(self.device.id, config)
                if config.shipment is not None:
                    self.outbox.note_trip(self.device.id, config.shipment)
            except Exception as exc:  # a bad config must never take the link down
                log.warning("device %s: config refused: %s", self.device.id, exc)
                continue
            self.link.applied_config = config.version
            log.info("device %s: config version %d applied", self.device.id, config.version)
            await client.publish_acked(
                self.topics.status(self.device.id), self._status("online"), retain=True
            )
