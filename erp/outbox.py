"""The ERP outbox worker: delivers due deliveries through their connection's adapter, with retries.

Three steps per batch, as in the notification outbox: claim due rows FOR UPDATE SKIP LOCKED and
mark them `sending` (commit); compose each event and call its adapter; store the outcome (commit).
A crash between the two commits leaves a row `sending`; once its lease has passed it is taken
again, and the adapter's idempotency check (the key per event and connection) finds what the
first attempt created. Retryable failures come back with jittered exponential backoff up to
`max_attempts`; the rest are final, visible per record (`GET /erp/deliveries`) and can be retried
by an administrator.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from coldchain.backoff import Backoff
from coldchain.errors import ConfigurationError, NotFoundError
from coldchain.settings import Settings
from erp import credentials
from erp.adapters import Adapter, Attachment, DeliveryFailed, OutboundEvent, TargetRecord
from erp.adapters.erpnext import ErpNextAdapter
from erp.adapters.odoo import OdooAdapter
from erp.adapters.webhook import WebhookAdapter
from evidence import bundle, model, signing
from evidence.report import pdf_bytes
from storage import alerts as alert_store
from storage import erp_outbox
from storage.erp_outbox import DeliveryRow

__all__ = ["ErpOutboxOptions", "ErpOutboxWorker", "build_adapter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErpOutboxOptions:
    """Tuning of the ERP outbox worker."""

    batch_size: int = 16
    max_attempts: int = 8
    backoff_base_s: float = 10.0
    backoff_max_s: float = 3600.0
    lease_s: float = 300.0  # a `sending` row is taken again after this long (a crash, a hang)
    poll_s: float = 2.0
    timeout_s: float = 30.0
    max_attachment_bytes: int = 50 * 1024 * 1024  # a larger bundle is announced, not attached
    max_recall_lots: int = 20

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_attempts < 1:
            raise ConfigurationError("ERP outbox batch size and max attempts must be positive")
        if self.lease_s <= 0 or self.poll_s <= 0 or self.timeout_s <= 0:
            raise ConfigurationError("ERP outbox lease, poll and timeout must be positive")


def build_adapter(
    kind: str,
    *,
    url: str,
    options: dict[str, Any],
    secret: str,
    timeout_s: float,
    allow_private: bool = False,
) -> Adapter:
    """The adapter of a connection from its stored settings and opened secret."""
    if kind == "webhook":
        return WebhookAdapter(url=url, secret=secret, timeout_s=timeout_s, allow_private=allow_private)
    if kind == "odoo":
        return OdooAdapter(
            url=url,
            database=str(options["database"]),
            login=str(options["login"]),
            api_key=secret,
            timeout_s=timeout_s,
            allow_private=allow_private,
        )
    if kind == "erpnext":
        return ErpNextAdapter(
            url=url,
            api_key=str(options["api_key"]),
            api_secret=secret,
            timeout_s=timeout_s,
            allow_private=allow_private,
        )
    raise ConfigurationError(f"unknown ERP connection kind {kind!r}")


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _file_part(text: str) -> str:
    return _UNSAFE.sub("_", text)[:60]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class ErpWorkerStats:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0


class ErpOutboxWorker:
    """Delivers due ERP deliveries. Safe to run in several processes at once (SKIP LOCKED)."""

    def __init__(
        self,
        *,
        settings: Settings,
        options: ErpOutboxOptions | None = None,
        clock_ms: Callable[[], int] | None = None,
        verify_url: str | None = None,
    ) -> None:
        self._settings = settings
        self._options = options or ErpOutboxOptions()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._data_dir = Path(settings.data_dir).resolve()
        base = settings.public_url or f"http://{settings.http_host}:{settings.http_port}"
        self._verify_url = verify_url or base.rstrip("/") + "/api/v1/evidence/verify"
        self._retry = Backoff(initial=self._options.backoff_base_s, maximum=self._options.backoff_max_s)
        self._adapters: dict[tuple[int, str, datetime], Adapter] = {}
        self.stats = ErpWorkerStats()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock_ms() / 1000, tz=UTC)

    def deliver_due(self, conn: psycopg.Connection, *, stop: threading.Event | None = None) -> int:
        """Deliver batches until nothing is due now; returns how many attempts were made."""
        total = 0
        while stop is None or not stop.is_set():
            done = self.deliver_batch(conn)
            total += done
            if done < self._options.batch_size:
                break
        return total

    def deliver_batch(self, conn: psycopg.Connection) -> int:
        with conn.transaction():
            rows = erp_outbox.claim_due(
                conn,
                now=self.now(),
                limit=self._options.batch_size,
                lease=timedelta(seconds=self._options.lease_s),
            )
        # Committed: every claimed row is `sending` before any ERP is called. A slow ERP may take
        # longer than the lease over the whole batch, so each row's lease starts again at its turn.
        lease = timedelta(seconds=self._options.lease_s)
        for row in rows:
            with conn.transaction():
                mine = erp_outbox.renew_lease(
                    conn, delivery_id=row.id, attempts=row.attempts, until=self.now() + lease
                )
            if not mine:
                continue
            self.stats.claimed += 1
            self._attempt(conn, row)
        return len(rows)

    def _attempt(self, conn: psycopg.Connection, row: DeliveryRow) -> None:
        try:
            with conn.transaction():
                adapter = self._adapter(conn, row)
                event = self.compose(conn, row)
            remote = adapter.deliver(event)
        except DeliveryFailed as exc:
            self._failed(conn, row, str(exc), retryable=exc.retryable)
            return
        except (ConfigurationError, NotFoundError) as exc:
            self._failed(conn, row, str(exc), retryable=False)
            return
        except Exception as exc:  # a bug must not stall the batch; the row is retried
            log.exception("ERP delivery %s could not be composed", row.idempotency_key)
            self._failed(conn, row, f"internal error: {type(exc).__name__}", retryable=True)
            return
        with conn.transaction():
            erp_outbox.record_delivered(conn, delivery_id=row.id, now=self.now(), remote_ref=remote)
        self.stats.delivered += 1
        log.info(
            "ERP delivery %s (%s) delivered to %s", row.idempotency_key, row.event_kind, row.connection_id
        )

    def _failed(self, conn: psycopg.Connection, row: DeliveryRow, error: str, *, retryable: bool) -> None:
        now = self.now()
        retry_at = None
        if retryable and row.attempts < self._options.max_attempts:
            retry_at = now + timedelta(seconds=self._retry.delay(row.attempts - 1))
            self.stats.retried += 1
        else:
            self.stats.failed += 1
        with conn.transaction():
            erp_outbox.record_failure(
                conn, delivery_id=row.id, attempts=row.attempts, now=now, error=error, retry_at=retry_at
            )
        log.warning(
            "ERP delivery %s to %s failed (attempt %d, %s): %s",
            row.idempotency_key,
            row.connection_id,
            row.attempts,
            "retrying" if retry_at else "final",
            error,
        )

    def _adapter(self, conn: psycopg.Connection, row: DeliveryRow) -> Adapter:
        found = erp_outbox.get_connection(conn, org=row.org_id, connection_id=row.connection_id)
        assert found is not None
        key = (row.org_id, row.connection_id, found.updated_at)  # a changed connection makes a new one
        adapter = self._adapters.get(key)
        if adapter is None:
            for stale in [k for k in self._adapters if k[:2] == key[:2]]:
                del self._adapters[stale]
            sealed = erp_outbox.connection_secret(conn, org=row.org_id, connection_id=row.connection_id)
            secret = credentials.open_sealed(
                self._settings.require_secret_key(),
                org_id=row.org_id,
                connection_id=row.connection_id,
                sealed=sealed,
            )
            adapter = build_adapter(
                found.kind,
                url=found.url,
                options=found.options,
                secret=secret,
                timeout_s=self._options.timeout_s,
                allow_private=self._settings.webhook_allow_private,
            )
            self._adapters[key] = adapter
        return adapter

    # -- composing an event ------------------------------------------------------------------------

    def compose(self, conn: psycopg.Connection, row: DeliveryRow) -> OutboundEvent:
        """The event as the adapter sends it: its document, its summary and its records' files."""
        document: dict[str, Any] = {
            "organization": row.organization,
            "occurred_at": _iso(row.event_at),
            "shipment": None
            if row.shipment_id is None
            else {"id": row.shipment_id, "erp_ref": row.shipment_ref},
        }
        ship_ref = row.shipment_ref or row.shipment_id
        if row.event_kind.startswith("alert."):
            assert row.alert_id is not None and ship_ref is not None
            alert = alert_store.get_alert(conn, org=row.org_id, alert_id=row.alert_id)
            document["alert"] = self._alert_doc(alert)
            verb = row.event_kind.split(".", 1)[1]
            who = f" by {alert.acknowledged_by}" if verb == "acknowledged" and alert.acknowledged_by else ""
            summary = (
                f"Cold-chain alert {alert.id} {verb}{who}: {alert.severity.value} {alert.kind} on shipment"
                f" {row.shipment_id}"
                + (f", logger {alert.device_id}" if alert.device_id else "")
                + f". {alert.message}"
                + (
                    f" Disposition: {alert.disposition.value}."
                    if verb == "closed" and alert.disposition
                    else ""
                )
            )
            return OutboundEvent(
                row.idempotency_key, row.event_kind, summary, document, (TargetRecord("shipment", ship_ref),)
            )
        if row.event_kind in ("excursion.closed", "shipment.completed"):
            assert row.evidence_id is not None and ship_ref is not None
            found = erp_outbox.evidence_file(conn, evidence_id=row.evidence_id)
            if found is None:
                raise NotFoundError("evidence record", str(row.evidence_id))
            files, doc = self._bundle_files(found)
            document["evidence"] = doc
            if row.alert_id is not None:
                document["alert"] = self._alert_doc(
                    alert_store.get_alert(conn, org=row.org_id, alert_id=row.alert_id)
                )
            what = (
                f"excursion (alert {row.alert_id}) closed"
                if row.event_kind == "excursion.closed"
                else f"shipment {row.shipment_id} completed"
            )
            summary = (
                f"Cold-chain evidence: {what}. Signed report and bundle attached"
                f" (record SHA-256 {found.record_sha256[:16]}…; verify at {self._verify_url})."
            )
            return OutboundEvent(
                row.idempotency_key,
                row.event_kind,
                summary,
                document,
                (TargetRecord("shipment", ship_ref, files),),
            )
        assert row.event_kind == "recall.opened" and row.recall_id is not None
        recall = erp_outbox.recall_summary(conn, org=row.org_id, recall_id=row.recall_id)
        if recall is None:
            raise NotFoundError("recall", str(row.recall_id))
        document["recall"] = {
            "id": recall.id,
            "reason": recall.reason,
            "classification": recall.classification,
            "opened_at": _iso(recall.opened_at),
            "opened_by": recall.opened_by,
            "lots": [{"gtin": g, "lot": lot} for g, lot in recall.lots],
        }
        targets = tuple(
            TargetRecord("lot", lot, (self._lot_pdf(conn, row.org_id, gtin, lot, recall.id),))
            for gtin, lot in recall.lots[: self._options.max_recall_lots]
        )
        summary = (
            f"Recall {recall.id} opened"
            + (f" (class {recall.classification})" if recall.classification else "")
            + f": {recall.reason}. The lot's cold-chain evidence is attached."
        )
        return OutboundEvent(row.idempotency_key, row.event_kind, summary, document, targets)

    @staticmethod
    def _alert_doc(alert: Any) -> dict[str, Any]:
        return {
            "id": alert.id,
            "kind": alert.kind,
            "severity": alert.severity.value,
            "state": alert.state.value,
            "message": alert.message,
            "device": alert.device_id,
            "shipment": alert.shipment_id,
            "limit": alert.limit_id,
            "opened_at": _iso(alert.opened_at),
            "started_at": _iso(alert.started_at),
            "ended_at": _iso(alert.ended_at),
            "peak_c": alert.peak_c,
            "acknowledged_at": _iso(alert.acknowledged_at),
            "acknowledged_by": alert.acknowledged_by,
            "closed_at": _iso(alert.closed_at),
            "disposition": None if alert.disposition is None else alert.disposition.value,
            "lots": [{"gtin": g, "lot": lot} for g, lot in alert.lots],
        }

    def _bundle_files(self, found: erp_outbox.EvidenceFile) -> tuple[tuple[Attachment, ...], dict[str, Any]]:
        path = (self._data_dir / found.file_name).resolve()
        if self._data_dir not in path.parents:
            raise ConfigurationError(f"evidence file {found.file_name!r} is outside the data folder")
        if not path.is_file():
            # The recorder renames the file into place before its row commits: a missing file is
            # a data folder not shared with this process; retry until it is.
            raise DeliveryFailed(
                f"evidence file {found.file_name} is not in this data folder", retryable=True
            )
        stem = _file_part(f"{found.subject_kind}-{found.subject}-{found.stage}-{found.bundle_sha256[:12]}")
        with zipfile.ZipFile(path) as zf:
            pdf = zf.read("report.pdf")
        files = [Attachment(f"{stem}.pdf", "application/pdf", pdf, hashlib.sha256(pdf).hexdigest())]
        attached = found.size_bytes <= self._options.max_attachment_bytes
        if attached:
            files.append(Attachment(f"{stem}.zip", "application/zip", path.read_bytes(), found.bundle_sha256))
        doc = {
            "id": found.id,
            "subject_kind": found.subject_kind,
            "subject": found.subject,
            "stage": found.stage,
            "bundle_sha256": found.bundle_sha256,
            "record_sha256": found.record_sha256,
            "bundle_bytes": found.size_bytes,
            "bundle_attached": attached,
            "verify_url": self._verify_url,
        }
        return tuple(files), doc

    def _lot_pdf(self, conn: psycopg.Connection, org: int, gtin: str, lot: str, recall_id: int) -> Attachment:
        ev = model.lot_evidence(conn, org=org, gtin=gtin, lot=lot)
        key = signing.signing_key(self._data_dir)
        pdf = pdf_bytes(ev, record_sha256=bundle.record_sha256(ev), verify_url=self._verify_url, key=key)
        name = _file_part(f"lot-{gtin}-{lot}-recall-{recall_id}") + ".pdf"
        return Attachment(name, "application/pdf", pdf, hashlib.sha256(pdf).hexdigest())
