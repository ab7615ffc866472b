"""The config publisher: sends each device's desired config as its retained MQTT message.

The API stores a new config version and NOTIFYs `device_config` in one transaction; this worker,
run by the API process, wakes on that NOTIFY (and polls), publishes every version the broker
does not hold yet with QoS 1 and retain, and marks it published only after the PUBACK. On start
it sends whatever was left pending, so a broker restart or an API crash between the commit and
the publish loses nothing. Broker credentials come from MQTT_URL (mqtt://user:password@host);
without them it connects anonymously.
"""

from __future__ import annotations

import logging
import threading
import uuid

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from coldchain.errors import ValidationError
from coldchain.mqtt_url import BrokerAddress
from coldchain.wire import DeviceConfig, Topics
from storage import device_config
from storage.listen import Wakeup, listen

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 10.0


class ConfigPublisher:
    """A thread publishing pending desired configs; `start()` and `stop()` from the API lifespan."""

    def __init__(
        self, *, dsn: str, mqtt_url: str, topics: Topics, poll_s: float = 5.0, client_id: str | None = None
    ) -> None:
        self.dsn = dsn
        self.broker = BrokerAddress.parse(mqtt_url)
        self.topics = topics
        self.poll_s = poll_s
        self.client_id = client_id or f"coldchain-config-{uuid.uuid4().hex[:8]}"
        self.published = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None

    def start(self) -> ConfigPublisher:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._thread = threading.Thread(target=self._run, name="config-publisher", daemon=True)
        self._thread.start()
        log.info("config publisher started on %s", self.broker.display())
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("config publisher: broker refused the connection: %s", reason)
            return
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object = None) -> None:
        self._connected.clear()

    def _run(self) -> None:
        listen(self.dsn, Wakeup.DEVICE_CONFIG, self._work, stop=self._stop, poll_s=self.poll_s,
               name="config publisher")

    def _work(self, conn: psycopg.Connection, payloads: list[str]) -> None:
        """Publish everything pending; a failure leaves the rest for the next wake-up or poll."""
        if not self._connected.wait(timeout=min(self.poll_s, 2.0)):
            return
        with conn.transaction():
            todo = device_config.pending(conn)
        for item in todo:
            if self._stop.is_set():
                return
            try:
                payload = DeviceConfig(version=item.version, **item.body).encode()
            except (TypeError, ValidationError) as exc:  # stored bodies are checked; never block the rest
                with conn.transaction():
                    device_config.mark_failed(conn, device_key=item.device_key, error=str(exc))
                continue
            error = self._publish(item.mqtt_name, payload)
            with conn.transaction():
                if error is None:
                    device_config.mark_published(conn, device_key=item.device_key, version=item.version)
                else:
                    device_config.mark_failed(conn, device_key=item.device_key, error=error)
            if error is not None:
                log.warning("config v%d for %s not published: %s", item.version, item.mqtt_name, error)
                return
            self.published += 1
            log.info("config v%d for %s published", item.version, item.mqtt_name)

    def _publish(self, mqtt_name: str, payload: bytes) -> str | None:
        assert self._client is not None
        try:
            info = self._client.publish(self.topics.config(mqtt_name), payload, qos=1, retain=True)
            info.wait_for_publish(PUBACK_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:  # not connected, or paho's queue is full
            return f"{type(exc).__name__}: {exc}"
        if not info.is_published():
            return f"no PUBACK within {PUBACK_TIMEOUT_S:.0f} s (rc {info.rc})"
        return None
