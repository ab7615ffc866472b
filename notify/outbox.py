"""The notification outbox worker: delivers due rows, retries, and records what each send produced.

Sending at most once per idempotency key, in three steps: claim due rows FOR UPDATE SKIP LOCKED
and mark them `sending` (commit); call the channel; store the receipt (commit). A row a crash
leaves `sending`, or one whose send failed ambiguously, waits `ambiguous_grace_s` for a Twilio
status callback carrying its key (the API's status route settles it) before it is sent again.
Retryable failures come back with exponential backoff and jitter, up to `max_attempts`; other
failures are final and visible on the alert. `notify.service` runs it on a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from coldchain.backoff import Backoff
from coldchain.domain import Alert
from coldchain.errors import ConfigurationError
from coldchain.notification import Channel
from coldchain.settings import Settings
from notify.chart import render_excursion_png
from notify.delivery import DeliveryError, DeliveryReceipt
from notify.email import SmtpEmail, build_alert_email, build_withdrawal_email
from notify.links import issue_ack_token, issue_recall_ack_token
from notify.recall_messages import RECALL_ACK_PATH, recall_email, recall_sms_text, recall_webhook_body
from notify.sms import TwilioSms, TwilioVoice, alert_sms_text, alert_withdrawal_text
from notify.webhook import WebhookEndpoint, WebhookSender
from storage import alerts as alert_store
from storage import notify_directory, notify_outbox, readings, recalls
from storage.notify_outbox import NotificationRow

__all__ = [
    "ChannelSet",
    "OutboxOptions",
    "OutboxWorker",
    "ack_link_base",
    "status_callback_url",
]

log = logging.getLogger(__name__)
_WEBHOOK_EVENTS = {
    "escalation": "alert.notification",
    "digest": "alert.digest",
    "withdrawal": "alert.withdrawn",
}

STATUS_PATH = "/api/v1/notify/twilio/status"
ACK_PATH = "/ack"


@dataclass(frozen=True, slots=True)
class OutboxOptions:
    """Tuning of the outbox worker and the escalation tick."""

    batch_size: int = 32
    send_threads: int = 8
    max_attempts: int = 6
    backoff_base_s: float = 5.0
    backoff_max_s: float = 900.0
    ambiguous_grace_s: float = 120.0
    poll_s: float = 1.0
    tick_s: float = 5.0
    ack_link_ttl_s: int = 24 * 3600

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.send_threads < 1 or self.max_attempts < 1:
            raise ConfigurationError("outbox batch size, send threads and max attempts must be positive")
        if self.ambiguous_grace_s <= 0 or self.poll_s <= 0 or self.tick_s <= 0:
            raise ConfigurationError("outbox grace, poll and tick intervals must be positive")


def status_callback_url(settings: Settings) -> str | None:
    """Where Twilio reports delivery: the API's status route under PUBLIC_URL."""
    return settings.public_url.rstrip("/") + STATUS_PATH if settings.public_url else None


def ack_link_base(settings: Settings) -> str | None:
    return settings.public_url.rstrip("/") + ACK_PATH if settings.public_url else None


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


class ChannelSet:
    """The channels built from Settings, one instance per sending thread (HTTP sessions are not
    shared between threads). A channel whose settings are missing is None."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._made: list[Any] = []
        self._lock = threading.Lock()

    def _keep(self, channel: Any) -> Any:
        with self._lock:
            self._made.append(channel)
        return channel

    def sms(self) -> TwilioSms | None:
        s = self._settings
        token = _secret(s.twilio_auth_token)
        if not s.twilio_account_sid or not token or not (s.twilio_from or s.twilio_messaging_service_sid):
            return None
        found: TwilioSms | None = getattr(self._local, "sms", None)
        if found is None:
            found = self._keep(
                TwilioSms(
                    account_sid=s.twilio_account_sid,
                    auth_token=token,
                    from_number=None if s.twilio_messaging_service_sid else s.twilio_from,
                    messaging_service_sid=s.twilio_messaging_service_sid,
                    api_base_url=s.twilio_api_base_url,
                    status_callback_url=status_callback_url(s),
                    timeout_s=self._timeout_s,
                )
            )
            self._local.sms = found
        return found

    def voice(self) -> TwilioVoice | None:
        s = self._settings
        token = _secret(s.twilio_auth_token)
        if not s.twilio_account_sid or not token or not s.twilio_from:
            return None
        found: TwilioVoice | None = getattr(self._local, "voice", None)
        if found is None:
            found = self._keep(
                TwilioVoice(
                    account_sid=s.twilio_account_sid,
                    auth_token=token,
                    from_number=s.twilio_from,
                    api_base_url=s.twilio_api_base_url,
                    status_callback_url=status_callback_url(s),
                    timeout_s=self._timeout_s,
                )
            )
            self._local.voice = found
        return found

    def email(self) -> SmtpEmail | None:
        s = self._settings
        if not s.smtp_host or not s.smtp_from:
            return None
        found: SmtpEmail | None = getattr(self._local, "email", None)
        if found is None:
            found = SmtpEmail(
                host=s.smtp_host,
                port=s.smtp_port,
                from_address=s.smtp_from,
                security=s.smtp_security,
                user=s.smtp_user,
                password=_secret(s.smtp_password),
            )
            self._local.email = found
        return found

    def webhook(self) -> WebhookSender:
        found: WebhookSender | None = getattr(self._local, "webhook", None)
        if found is None:
            found = WebhookSender(timeout_s=self._timeout_s)
            self._local.webhook = found
        return found

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for channel in made:
            channel.close()


@dataclass(frozen=True, slots=True)
class _Job:
    """One claimed row with everything its send needs, read before the send."""

    row: NotificationRow
    alerts: tuple[Alert, ...]
    webhook_secret: str | None = None
    chart: tuple[list[float], list[float]] | None = None
    recall: recalls.RecallMessage | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    row: NotificationRow
    receipt: DeliveryReceipt | None = None
    error: DeliveryError | None = None


@dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    ambiguous: int = 0


class OutboxWorker:
    """Delivers due outbox rows. Safe to run in several processes at once (SKIP LOCKED)."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock_ms: Callable[[], int],
        options: OutboxOptions,
        channels: ChannelSet | None = None,
    ) -> None:
        self._settings = settings
        self._clock_ms = clock_ms
        self._options = options
        self._channels = channels or ChannelSet(settings)
        self._pool = ThreadPoolExecutor(max_workers=options.send_threads, thread_name_prefix="notify-send")
        self._retry = Backoff(initial=options.backoff_base_s, maximum=options.backoff_max_s, jitter=0.5)
        self.stats = WorkerStats()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock_ms() / 1000, tz=UTC)

    def deliver_due(self, conn: psycopg.Connection, *, stop: threading.Event | None = None) -> int:
        """Deliver batches until nothing is due now; returns how many rows were attempted."""
        total = 0
        while stop is None or not stop.is_set():
            done = self.deliver_batch(conn)
            total += done
            if done < self._options.batch_size:
                return total
        return total

    def deliver_batch(self, conn: psycopg.Connection) -> int:
        now = self.now()
        grace = timedelta(seconds=self._options.ambiguous_grace_s)
        with conn.transaction():
            notify_outbox.cancel_unsent(conn, now=now)
            notify_outbox.expire_unconfirmed(conn, now=now, max_attempts=self._options.max_attempts)
            rows = notify_outbox.claim_due(conn, now=now, limit=self._options.batch_size, grace=grace)
        # Committed: every claimed row is `sending` before any provider is called.
        if not rows:
            return 0
        self.stats.claimed += len(rows)
        with conn.transaction():
            jobs = [self._prepare(conn, row) for row in rows]
        outcomes = list(self._pool.map(self._send, jobs))
        done_at = self.now()
        with conn.transaction():
            for outcome in outcomes:
                self._record(conn, outcome, done_at)
        return len(rows)

    # -- reading what a send needs ---------------------------------------------------------

    def _prepare(self, conn: psycopg.Connection, row: NotificationRow) -> _Job:
        if row.kind == "recall" and row.recall_consignee_id is not None:
            secret = None
            if row.channel == Channel.WEBHOOK.value and row.contact_id is not None:
                secret = notify_directory.get_contact(
                    conn, org=row.org_id, contact_id=row.contact_id
                ).webhook_secret
            message = recalls.message(conn, consignee_id=row.recall_consignee_id)
            return _Job(row=row, alerts=(), webhook_secret=secret, recall=message)
        if row.kind == "digest":
            members = notify_outbox.digest_members(conn, row.id)
            ids = sorted({m.alert_id for m in members if m.alert_id is not None})
            found = tuple(alert_store.get_alert(conn, org=row.org_id, alert_id=i) for i in ids)
        elif row.alert_id is not None:
            found = (alert_store.get_alert(conn, org=row.org_id, alert_id=row.alert_id),)
        else:
            found = ()
        secret = None
        if row.channel == Channel.WEBHOOK.value and row.contact_id is not None:
            secret = notify_directory.get_contact(
                conn, org=row.org_id, contact_id=row.contact_id
            ).webhook_secret
        chart = None
        if row.channel == Channel.EMAIL.value and row.kind == "escalation" and row.alert_id is not None:
            chart = readings.alert_readings(conn, alert_id=row.alert_id)
        return _Job(row=row, alerts=found, webhook_secret=secret, chart=chart)

    # -- sending (on the pool) --------------------------------------------------------------

    def _send(self, job: _Job) -> _Outcome:
        row = job.row
        try:
            return _Outcome(row, receipt=self._dispatch(job))
        except DeliveryError as exc:
            return _Outcome(row, error=exc)
        except Exception as exc:  # a bug must not stall the whole batch
            log.exception("notification %s could not be composed", row.idempotency_key)
            return _Outcome(
                row,
                error=DeliveryError(
                    f"internal error: {type(exc).__name__}", channel=Channel(row.channel), retryable=True
                ),
            )

    def _recall_link(self, job: _Job) -> str | None:
        public = self._settings.public_url
        if not public or job.recall is None or job.row.contact_id is None:
            return None
        token = issue_recall_ack_token(
            self._settings.secret_key.get_secret_value(),
            consignee_id=job.recall.consignee_id,
            contact_id=job.row.contact_id,
            now=self._clock_ms() / 1000,
        )
        return f"{public.rstrip('/')}{RECALL_ACK_PATH}/{token}"

    def _dispatch_recall(self, job: _Job) -> DeliveryReceipt:
        row, message = job.row, job.recall
        assert message is not None
        channel = Channel(row.channel)
        link = self._recall_link(job)
        if channel is Channel.SMS:
            sms = self._channels.sms()
            if sms is None:
                raise DeliveryError("SMS is not configured (TWILIO_*)", channel=channel, retryable=False)
            return sms.send(
                to=row.recipient, body=recall_sms_text(message, link), idempotency_key=row.idempotency_key
            )
        if channel is Channel.EMAIL:
            email = self._channels.email()
            if email is None:
                raise DeliveryError("e-mail is not configured (SMTP_*)", channel=channel, retryable=False)
            mail = recall_email(
                message,
                to=row.recipient,
                from_address=email.from_address,
                idempotency_key=row.idempotency_key,
                ack_link=link,
                now=self.now(),
            )
            return email.send(mail, idempotency_key=row.idempotency_key)
        if channel is Channel.WEBHOOK:
            if job.webhook_secret is None:
                raise DeliveryError("the contact's webhook has no secret", channel=channel, retryable=False)
            endpoint = WebhookEndpoint(url=row.recipient, secret=job.webhook_secret)
            body = recall_webhook_body(message, idempotency_key=row.idempotency_key, ack_link=link)
            return self._channels.webhook().send(endpoint, body, idempotency_key=row.idempotency_key)
        raise DeliveryError("recalls are not announced by voice", channel=channel, retryable=False)

    def _dispatch(self, job: _Job) -> DeliveryReceipt:
        row = job.row
        channel = Channel(row.channel)
        if job.recall is not None:
            return self._dispatch_recall(job)
        if not job.alerts:
            raise DeliveryError("nothing to say: the alert is gone", channel=channel, retryable=False)
        if channel is Channel.SMS:
            sms = self._channels.sms()
            if sms is None:
                raise DeliveryError("SMS is not configured (TWILIO_*)", channel=channel, retryable=False)
            return sms.send(to=row.recipient, body=self._short_text(job), idempotency_key=row.idempotency_key)
        if channel is Channel.VOICE:
            voice = self._channels.voice()
            if voice is None:
                raise DeliveryError("voice needs TWILIO_FROM", channel=channel, retryable=False)
            text = self._short_text(job).replace("Reply ACK", "Reply to the text message with ACK")
            return voice.send(to=row.recipient, body=text, idempotency_key=row.idempotency_key)
        if channel is Channel.EMAIL:
            email = self._channels.email()
            if email is None:
                raise DeliveryError("e-mail is not configured (SMTP_*)", channel=channel, retryable=False)
            return email.send(self._email(job, email.from_address), idempotency_key=row.idempotency_key)
        if job.webhook_secret is None:
            raise DeliveryError("the contact's webhook has no secret", channel=channel, retryable=False)
        endpoint = WebhookEndpoint(url=row.recipient, secret=job.webhook_secret)
        return self._channels.webhook().send(
            endpoint, self._webhook_body(job), idempotency_key=row.idempotency_key
        )

    def _short_text(self, job: _Job) -> str:
        if job.row.kind == "withdrawal":
            return alert_withdrawal_text(job.alerts[0])
        if job.row.kind != "digest":
            return alert_sms_text(job.alerts[0], escalated_tier=job.row.tier)
        lines = [f"Coldchain digest: {len(job.alerts)} alert(s)."]
        for alert in job.alerts[:5]:
            where = alert.shipment_id or alert.device_id or "logger"
            lines.append(f"{alert.id} {alert.severity.value} {where} ({alert.state.value})")
        if len(job.alerts) > 5:
            lines.append(f"and {len(job.alerts) - 5} more")
        lines.append(f"Reply ACK {job.alerts[0].id} to acknowledge one.")
        return "\n".join(lines).replace("°", "")

    def _email(self, job: _Job, from_address: str) -> Any:
        row = job.row
        alert = job.alerts[0]
        if row.kind == "withdrawal":
            return build_withdrawal_email(
                alert=alert, to=row.recipient, from_address=from_address,
                idempotency_key=row.idempotency_key, now=self.now(),
            )
        link = None
        base = ack_link_base(self._settings)
        if base and row.contact_id and row.kind == "escalation":
            token = issue_ack_token(
                self._settings.secret_key.get_secret_value(),
                alert_id=alert.id,
                contact_id=row.contact_id,
                ttl_s=self._options.ack_link_ttl_s,
                now=self._clock_ms() / 1000,
            )
            link = f"{base}/{token}"
        chart = None
        if job.chart is not None and len(job.chart[0]) >= 2:
            chart = render_excursion_png(job.chart[0], job.chart[1])
        public = self._settings.public_url
        dashboard = public.rstrip("/") + "/dashboard" if public else None
        return build_alert_email(
            alert=alert,
            to=row.recipient,
            from_address=from_address,
            idempotency_key=row.idempotency_key,
            ack_link=link,
            chart_png=chart,
            dashboard_url=dashboard,
            now=self.now(),
        )

    def _webhook_body(self, job: _Job) -> dict[str, Any]:
        return {
            "event": _WEBHOOK_EVENTS[job.row.kind],
            "notification": job.row.idempotency_key,
            "tier": job.row.tier,
            "alerts": [
                {
                    "id": a.id,
                    "organization": a.organization,
                    "kind": a.kind,
                    "severity": a.severity.value,
                    "state": a.state.value,
                    "shipment": a.shipment_id,
                    "device": a.device_id,
                    "message": a.message,
                    "opened_at": a.opened_at.isoformat(),
                    "peak_c": a.peak_c,
                    "lots": [{"gtin": g, "lot": lot} for g, lot in a.lots],
                }
                for a in job.alerts
            ],
        }

    # -- recording --------------------------------------------------------------------------

    def _backoff(self, attempts: int, retry_after_s: float | None) -> float:
        delay = self._retry.delay(max(attempts - 1, 0))  # "equal jitter": never less than half
        return max(delay, retry_after_s or 0.0)

    def _record(self, conn: psycopg.Connection, outcome: _Outcome, now: datetime) -> None:
        row = outcome.row
        if outcome.receipt is not None:
            receipt = outcome.receipt
            notify_outbox.record_outcome(
                conn,
                row_id=row.id,
                state=receipt.state.value,
                now=now,
                provider_id=receipt.provider_id,
                provider_status=receipt.detail,
            )
            if row.recall_consignee_id is not None:  # the consignee was told: its notified_at
                recalls.mark_notified(conn, consignee_id=row.recall_consignee_id, at=now)
            self.stats.sent += 1
            return
        error = outcome.error
        assert error is not None
        message = str(error)[:500]
        if error.ambiguous:
            # Maybe delivered: stay `sending` until the grace set at claim time runs out, so a
            # status callback can settle it first.
            notify_outbox.record_outcome(conn, row_id=row.id, state="sending", now=now, error=message)
            self.stats.ambiguous += 1
            log.warning(
                "notification %s: outcome unknown (%s); waiting for a callback", row.idempotency_key, message
            )
        elif error.retryable and row.attempts < self._options.max_attempts:
            delay = self._backoff(row.attempts, error.retry_after_s)
            notify_outbox.record_outcome(
                conn,
                row_id=row.id,
                state="pending",
                now=now,
                error=message,
                next_attempt_at=now + timedelta(seconds=delay),
            )
            self.stats.retried += 1
            log.info("notification %s retried in %.0f s: %s", row.idempotency_key, delay, message)
        else:
            notify_outbox.record_outcome(conn, row_id=row.id, state="failed", now=now, error=message)
            self.stats.failed += 1
            log.warning("notification %s failed: %s", row.idempotency_key, message)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._channels.close()
