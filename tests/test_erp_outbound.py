"""Outbound to the ERP: events written in the transaction of their change, delivered through the
outbox to local stand-ins of a signed webhook receiver, Odoo (JSON-RPC) and ERPNext (REST), with
retries, idempotency after a lost answer or a crash, and the API that configures and shows it."""

from __future__ import annotations

import hashlib
import hmac
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from coldchain.domain import Disposition, Severity
from coldchain.errors import ConfigurationError
from coldchain.settings import Settings
from erp import credentials
from erp.outbox import ErpOutboxOptions, ErpOutboxWorker
from erp.recalls import RecallRequest, open_recall
from evidence import signing
from evidence.attach import record_due
from rules.runner import drain
from storage import alerts, auth, erp_outbox, registry
from tests.support.api import api_client
from tests.support.erp_standins import FrappeStandIn, OdooStandIn, Received, WebhookReceiver, serve
from tests.support.identity import bearer, make_user
from tests.support.lots import GTIN, add_leg, write_readings
from tests.support.waiting import wait_for

SECRET = "k" * 48
WEBHOOK_SECRET = "whsec-0123456789abcdef"


class Clock:
    """The worker's clock, moved by hand (retries are due by it, not by the wall)."""

    def __init__(self) -> None:
        # a little ahead of the database's now(), which stamps new deliveries as due
        self.ms = int(datetime.now(UTC).timestamp() * 1000) + 600_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    # the stand-ins listen on loopback, which the address policy refuses unless told otherwise
    return Settings(
        database_url=db_dsn, data_dir=tmp_path / "data", secret_key=SECRET, webhook_allow_private=True
    )  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _worker(settings: Settings, clock: Clock, **options: Any) -> ErpOutboxWorker:
    return ErpOutboxWorker(
        settings=settings,
        clock_ms=clock,
        options=ErpOutboxOptions(backoff_base_s=10, backoff_max_s=60, **options),
        verify_url="https://qa.example/verify",
    )


def _connect(
    db: psycopg.Connection, kind: str, url: str, secret: str, *, cid: str = "erp", **options: str
) -> None:
    sealed = credentials.seal(SECRET, org_id=1, connection_id=cid, secret=secret)
    erp_outbox.put_connection(
        db,
        org=1,
        connection_id=cid,
        kind=kind,
        url=url,
        options=dict(options),
        sealed_secret=sealed,
        events=list(erp_outbox.EVENT_KINDS),
        enabled=True,
        actor="t",
    )


def _shipment(db: psycopg.Connection, shipment_id: str = "S1") -> int:
    add_leg(db, shipment_id, [f"{shipment_id}-L"], 0, None)
    return registry.get_shipment(db, org=1, shipment_id=shipment_id).key


def _raise(db: psycopg.Connection, shipment_key: int, episode: str = "e1") -> int:
    with db.transaction():
        alert_id, _ = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key=episode,
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C",
                started_at=datetime.now(UTC),
                shipment_key=shipment_key,
            ),
        )
    return alert_id


def _states(db: psycopg.Connection) -> list[tuple[str, str, int]]:
    rows = db.execute(
        "SELECT e.kind, d.state, d.attempts FROM erp_deliveries d JOIN erp_events e ON e.id = d.event_id"
        " ORDER BY d.id"
    ).fetchall()
    return [(str(k), str(s), int(a)) for k, s, a in rows]


def _check_signature(req: Received) -> dict[str, Any]:
    ts = req.headers["x-coldchain-timestamp"]
    expected = hmac.new(WEBHOOK_SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers["x-coldchain-signature"], "v1=" + expected)
    doc: dict[str, Any] = orjson.loads(req.body)
    return doc


# -- the signed webhook ---------------------------------------------------------------------------------


@pytest.mark.both_engines  # the triggers on the alerts and evidence of readings on either engine
def test_alert_changes_reach_the_webhook_signed_retried_after_a_5xx_and_once_only(
    db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    receiver = WebhookReceiver()
    with serve(receiver) as url:
        _connect(db, "webhook", url + "/hooks/coldchain", WEBHOOK_SECRET)
        key = _shipment(db)
        erp_outbox.set_shipment_ref(db, org=1, shipment_id="S1", erp_ref="SO/2026/0042", actor="t")

        # a change that rolls back leaves no event behind
        with pytest.raises(RuntimeError), db.transaction():
            alerts.raise_alert(
                db,
                alerts.NewAlert(
                    org_id=1,
                    episode_key="gone",
                    kind="single",
                    severity=Severity.ALARM,
                    message="x",
                    started_at=datetime.now(UTC),
                    shipment_key=key,
                ),
            )
            raise RuntimeError("rolled back")
        assert _states(db) == []

        alert_id = _raise(db, key)
        assert _states(db) == [("alert.opened", "pending", 0)]  # written with the alert itself

        worker = _worker(settings, clock)
        db.execute("UPDATE erp_connections SET enabled = false")  # paused: its deliveries wait
        assert worker.deliver_due(db) == 0 and receiver.received == []
        db.execute("UPDATE erp_connections SET enabled = true")
        receiver.fail_next = 1
        assert worker.deliver_due(db) == 1
        row = erp_outbox.deliveries(db, org=1, alert_id=alert_id)[0]
        assert (row.state, row.attempts) == ("pending", 1) and "HTTP 503" in (row.last_error or "")
        assert worker.deliver_due(db) == 0  # not due before its backoff
        clock.advance(61)
        assert worker.deliver_due(db) == 1
        assert _states(db) == [("alert.opened", "delivered", 2)]

        first, second = receiver.received
        assert (
            first.headers["x-coldchain-delivery"]
            == second.headers["x-coldchain-delivery"]
            == row.idempotency_key
        )
        doc = _check_signature(second)
        assert doc["event"] == "alert.opened" and doc["alert"]["id"] == alert_id
        assert doc["shipment"] == {"id": "S1", "erp_ref": "SO/2026/0042"}
        assert doc["records"] == [{"kind": "shipment", "ref": "SO/2026/0042", "attachments": []}]

        alerts.transition(
            db, org=1, alert_id=alert_id, action="acknowledge", actor="dana@example.com", comment="on it"
        )
        assert worker.deliver_due(db) == 1
        doc = _check_signature(receiver.received[-1])
        assert doc["event"] == "alert.acknowledged" and doc["alert"]["acknowledged_by"] == "dana@example.com"
        assert "acknowledged by dana@example.com" in doc["summary"]
        assert worker.deliver_due(db) == 0 and len(receiver.received) == 3


def test_a_refused_webhook_fails_for_good_and_an_admin_retry_sends_it_again(
    db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    receiver = WebhookReceiver(status=400)
    with serve(receiver) as url:
        _connect(db, "webhook", url, WEBHOOK_SECRET)
        alert_id = _raise(db, _shipment(db))
        worker = _worker(settings, clock)
        worker.deliver_due(db)
        row = erp_outbox.deliveries(db, org=1, alert_id=alert_id)[0]
        assert (row.state, row.attempts) == ("failed", 1) and "HTTP 400" in (row.last_error or "")
        clock.advance(3600)
        assert worker.deliver_due(db) == 0  # final: not retried on its own
        receiver.status = 200
        erp_outbox.retry(db, org=1, delivery_id=row.id, now=clock_now(clock), actor="admin")
        assert worker.deliver_due(db) == 1
        assert erp_outbox.get_delivery(db, org=1, delivery_id=row.id).state == "delivered"
        assert len(receiver.received) == 2


def clock_now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.ms / 1000, tz=UTC)


# -- Odoo -----------------------------------------------------------------------------------------------


@pytest.fixture
def excursion(db: psycopg.Connection) -> Iterator[None]:
    """Two legs: LEG-1 with a 60-minute warm spell (an excursion) and LEG-2, both completed."""
    add_leg(db, "LEG-1", ["L1"], 0, 600)
    add_leg(db, "LEG-2", ["L3"], 600, 1200)
    warm = np.full(300, 5.0)
    warm[100:160] = 10.0
    write_readings(db, "L1", np.arange(300), warm, queue=True)
    write_readings(db, "L3", 600 + np.arange(300), np.full(300, 3.5), queue=True)
    yield


@pytest.mark.both_engines  # the triggers on the alerts and evidence of readings on either engine
def test_odoo_gets_the_pdf_and_bundle_on_the_picking_and_notes_in_its_chatter(
    db: psycopg.Connection, settings: Settings, clock: Clock, excursion: None
) -> None:
    odoo = OdooStandIn()
    picking = odoo.add("stock.picking", name="WH/OUT/00042", origin="SO042")
    other = odoo.add("stock.picking", name="WH/OUT/00043", origin="LEG-2")  # found by origin
    with serve(odoo) as url:
        _connect(db, "odoo", url, odoo.api_key, database=odoo.database, login=odoo.login)
        erp_outbox.set_shipment_ref(db, org=1, shipment_id="LEG-1", erp_ref="WH/OUT/00042", actor="t")
        drain(db)  # the rules open the excursion's alert: alert.opened
        data = settings.data_dir
        record_due(db, data_dir=data, key=signing.signing_key(data), verify_url="https://qa.example/verify")
        worker = _worker(settings, clock)
        worker.deliver_due(db)
        assert sorted(_states(db)) == [
            ("alert.opened", "delivered", 1),
            ("shipment.completed", "delivered", 1),
            ("shipment.completed", "delivered", 1),
        ]
        # the completed LEG-1's bundle and its PDF, byte for byte, on the right picking
        rec = next(r for r in erp_outbox.deliveries(db, org=1, shipment_id="LEG-1") if r.evidence_id)
        found = erp_outbox.evidence_file(db, evidence_id=rec.evidence_id or 0)
        assert found is not None
        bundle_bytes = (data / found.file_name).read_bytes()
        with zipfile.ZipFile(data / found.file_name) as zf:
            pdf = zf.read("report.pdf")
        files = odoo.find("ir.attachment", res_model="stock.picking", res_id=picking)
        by_type = {f["mimetype"]: f for f in files}
        assert by_type["application/pdf"]["raw"] == pdf and pdf.startswith(b"%PDF")
        assert by_type["application/zip"]["raw"] == bundle_bytes
        notes = odoo.find("mail.message", model="stock.picking", res_id=picking)
        assert len(notes) == 2  # the alert opened, the shipment completed
        completed = next(n for n in notes if n["attachment_ids"])
        assert sorted(completed["attachment_ids"]) == sorted(f["id"] for f in files)
        assert (
            "shipment LEG-1 completed" in completed["body"] and completed["subtype_xmlid"] == "mail.mt_note"
        )
        assert len(odoo.find("ir.attachment", res_model="stock.picking", res_id=other)) == 2

        # QA closes the excursion: its final bundle goes to the picking as well
        alert_id = next(
            r.alert_id for r in erp_outbox.deliveries(db, org=1) if r.event_kind == "alert.opened"
        )
        assert alert_id is not None
        alerts.transition(
            db,
            org=1,
            alert_id=alert_id,
            action="close",
            actor="qa",
            comment="door ajar",
            disposition=Disposition.RELEASE,
        )
        record_due(db, data_dir=data, key=signing.signing_key(data), verify_url="https://qa.example/verify")
        worker.deliver_due(db)
        kinds = [k for k, s, _ in _states(db) if s == "delivered"]
        assert kinds.count("alert.closed") == 1 and kinds.count("excursion.closed") == 1
        assert len(odoo.find("ir.attachment", res_model="stock.picking", res_id=picking)) == 4
        closed = [n for n in odoo.find("mail.message", res_id=picking) if "closed" in n["body"]]
        assert any("Disposition: release" in n["body"] for n in closed)


def test_odoo_redelivery_after_a_lost_answer_or_a_crash_creates_nothing_twice(
    db: psycopg.Connection, settings: Settings, clock: Clock, excursion: None
) -> None:
    odoo = OdooStandIn()
    picking = odoo.add("stock.picking", name="LEG-1")
    odoo.add("stock.picking", name="LEG-2")
    with serve(odoo) as url:
        _connect(db, "odoo", url, odoo.api_key, database=odoo.database, login=odoo.login)
        drain(db)
        data = settings.data_dir
        record_due(db, data_dir=data, key=signing.signing_key(data), verify_url="https://qa.example/verify")
        # Odoo commits the chatter note, the answer never arrives: the attempt is retried
        odoo.drop_once = lambda req: b'"message_post"' in req.body
        worker = _worker(settings, clock)
        worker.deliver_due(db)
        assert any(s == "pending" for _, s, _ in _states(db))
        clock.advance(61)
        worker.deliver_due(db)
        assert {s for _, s, _ in _states(db)} == {"delivered"}
        notes = odoo.find("mail.message", model="stock.picking", res_id=picking)
        assert len(notes) == len({n["body"] for n in notes}) == 2
        assert len(odoo.find("ir.attachment", res_id=picking)) == 2

        # a worker that crashed after Odoo took the attachments: the row stays `sending` until
        # its lease runs out, then another worker finds what was made and adds only the note
        alert_id = next(r.alert_id for r in erp_outbox.deliveries(db, org=1) if r.alert_id)
        assert alert_id is not None
        alerts.transition(
            db,
            org=1,
            alert_id=alert_id,
            action="close",
            actor="qa",
            comment="ok",
            disposition=Disposition.QUARANTINE,
        )
        record_due(db, data_dir=data, key=signing.signing_key(data), verify_url="https://qa.example/verify")
        with db.transaction():
            claimed = erp_outbox.claim_due(db, now=clock_now(clock), limit=10, lease=timedelta(seconds=300))
        crashed = next(r for r in claimed if r.event_kind == "excursion.closed")
        event = worker.compose(db, crashed)
        odoo.drop_once = lambda req: b'"message_post"' in req.body  # the crash: no note, no answer
        with pytest.raises(Exception):  # noqa: B017 - whatever the dying worker saw
            from erp.outbox import build_adapter

            build_adapter(
                "odoo",
                url=url,
                options={"database": odoo.database, "login": odoo.login},
                secret=odoo.api_key,
                timeout_s=5,
                allow_private=True,
            ).deliver(event)
        assert odoo.drop_once is None  # the crash happened at the note
        assert len(odoo.find("ir.attachment", res_id=picking)) == 4  # Odoo took the final bundle's files
        fresh = _worker(settings, clock)
        assert fresh.deliver_due(db) == 0  # still leased
        clock.advance(301)
        fresh.deliver_due(db)
        assert {s for _, s, _ in _states(db)} == {"delivered"}
        files = odoo.find("ir.attachment", res_id=picking)
        assert len(files) == 4 and len({f["description"] for f in files}) == 4
        final_notes = [
            n for n in odoo.find("mail.message", res_id=picking) if crashed.idempotency_key in n["body"]
        ]
        assert len(final_notes) == 1


def test_odoo_refusing_the_credentials_is_a_final_failure_and_a_missing_picking_is_retried(
    db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    odoo = OdooStandIn()
    with serve(odoo) as url:
        _connect(db, "odoo", url, "wrong-key", cid="bad", database=odoo.database, login=odoo.login)
        _connect(db, "odoo", url, odoo.api_key, cid="good", database=odoo.database, login=odoo.login)
        alert_id = _raise(db, _shipment(db))
        worker = _worker(settings, clock)
        worker.deliver_due(db)
        rows = {r.connection_id: r for r in erp_outbox.deliveries(db, org=1, alert_id=alert_id)}
        assert rows["bad"].state == "failed" and "refused the login" in (rows["bad"].last_error or "")
        assert rows["good"].state == "pending" and "no stock.picking named 'S1'" in (
            rows["good"].last_error or ""
        )
        odoo.add("stock.picking", name="S1")
        clock.advance(61)
        worker.deliver_due(db)
        assert erp_outbox.get_delivery(db, org=1, delivery_id=rows["good"].id).state == "delivered"
        # an error object from Odoo (a method the model does not have) is shown as Odoo said it
        from erp.adapters import DeliveryFailed
        from erp.adapters.odoo import OdooAdapter

        adapter = OdooAdapter(
            url=url, database=odoo.database, login=odoo.login, api_key=odoo.api_key, allow_private=True
        )
        with pytest.raises(DeliveryFailed, match="AttributeError"):
            adapter.execute_kw("stock.picking", "no_such_method", [])


# -- ERPNext --------------------------------------------------------------------------------------------


def test_erpnext_gets_a_file_and_a_comment_on_the_delivery_note_once(
    db: psycopg.Connection, settings: Settings, clock: Clock, excursion: None
) -> None:
    frappe = FrappeStandIn()
    frappe.add("Delivery Note", "MAT-DN-2026-00042")
    with serve(frappe) as url:
        _connect(db, "erpnext", url, frappe.api_secret, api_key=frappe.api_key)
        erp_outbox.set_shipment_ref(db, org=1, shipment_id="LEG-1", erp_ref="MAT-DN-2026-00042", actor="t")
        drain(db)
        data = settings.data_dir
        record_due(db, data_dir=data, key=signing.signing_key(data), verify_url="https://qa.example/verify")
        worker = _worker(settings, clock)
        frappe.drop_once = lambda req: req.path == "/api/resource/Comment" and req.method == "POST"
        worker.deliver_due(db)
        states = _states(db)
        # LEG-2 has no Delivery Note yet (404: retried); one LEG-1 comment's answer was lost
        assert sorted(s for _, s, _ in states).count("pending") == 2
        leg2 = [r for r in erp_outbox.deliveries(db, org=1, shipment_id="LEG-2")]
        assert "no Delivery Note 'LEG-2'" in (leg2[0].last_error or "")
        frappe.add("Delivery Note", "LEG-2")
        clock.advance(61)
        worker.deliver_due(db)
        assert {s for _, s, _ in _states(db)} == {"delivered"}

        files = [f for f in frappe.docs["File"].values() if f["attached_to_name"] == "MAT-DN-2026-00042"]
        rec = next(r for r in erp_outbox.deliveries(db, org=1, shipment_id="LEG-1") if r.evidence_id)
        found = erp_outbox.evidence_file(db, evidence_id=rec.evidence_id or 0)
        assert found is not None
        with zipfile.ZipFile(data / found.file_name) as zf:
            pdf = zf.read("report.pdf")
        pdfs = [f for f in files if f["file_name"].endswith(".pdf")]
        assert len(pdfs) == 1 and pdfs[0]["content"] == pdf and pdfs[0]["is_private"] == 1
        assert pdfs[0]["attached_to_doctype"] == "Delivery Note"
        comments = [c for c in frappe.docs["Comment"].values() if c["reference_name"] == "MAT-DN-2026-00042"]
        assert len(comments) == 2 and {c["comment_type"] for c in comments} == {"Comment"}
        assert any("completed" in c["content"] for c in comments)
        assert all(
            r.headers["authorization"] == f"token {frappe.api_key}:{frappe.api_secret}"
            for r in frappe.received
        )


# -- recalls --------------------------------------------------------------------------------------------


def test_a_recall_pushes_the_lot_evidence_to_the_lot_record(
    db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    odoo = OdooStandIn()
    lot = odoo.add("stock.lot", name="A1")
    with serve(odoo) as url:
        _connect(db, "odoo", url, odoo.api_key, database=odoo.database, login=odoo.login)
        _shipment(db)
        recall = open_recall(
            db,
            org=1,
            request=RecallRequest(reason="seal defect", gtin=GTIN, lots=("A1",)),
            actor="qa@home.org",
        )
        _worker(settings, clock).deliver_due(db)
        assert _states(db) == [("recall.opened", "delivered", 1)]
        (pdf,) = odoo.find("ir.attachment", res_model="stock.lot", res_id=lot)
        assert pdf["raw"].startswith(b"%PDF") and pdf["name"] == f"lot-{GTIN}-A1-recall-{recall.id}.pdf"
        (note,) = odoo.find("mail.message", model="stock.lot", res_id=lot)
        assert f"Recall {recall.id} opened" in note["body"] and "seal defect" in note["body"]


# -- secrets --------------------------------------------------------------------------------------------


def test_connection_secrets_are_sealed_and_open_only_with_the_key_and_their_connection(
    db: psycopg.Connection,
) -> None:
    _connect(db, "webhook", "https://erp.example.com/hook", WEBHOOK_SECRET)
    sealed = erp_outbox.connection_secret(db, org=1, connection_id="erp")
    assert WEBHOOK_SECRET.encode() not in sealed
    assert credentials.open_sealed(SECRET, org_id=1, connection_id="erp", sealed=sealed) == WEBHOOK_SECRET
    with pytest.raises(ConfigurationError):
        credentials.open_sealed("x" * 48, org_id=1, connection_id="erp", sealed=sealed)
    with pytest.raises(ConfigurationError):  # moved onto another connection
        credentials.open_sealed(SECRET, org_id=1, connection_id="other", sealed=sealed)


def test_every_attempt_checks_the_address_policy_again(
    db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    receiver = WebhookReceiver()
    with serve(receiver) as url:
        _connect(db, "webhook", url, WEBHOOK_SECRET)
        alert_id = _raise(db, _shipment(db))
        strict = settings.model_copy(update={"webhook_allow_private": False})
        _worker(strict, clock).deliver_due(db)
        (row,) = erp_outbox.deliveries(db, org=1, alert_id=alert_id)
        assert row.state == "failed" and "refused" in (row.last_error or "")
        assert receiver.received == []  # nothing left the platform


# -- the API --------------------------------------------------------------------------------------------


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection, settings: Settings) -> Iterator[TestClient]:
    make_user(db, "admin@home.org", ["admin"])
    make_user(db, "viewer@home.org", ["viewer"])
    make_user(db, "logistics@home.org", ["logistics"])
    other = auth.create_organization(db, "acme", "Acme")
    make_user(db, "admin@acme.org", ["admin"], org=other)
    public_only = settings.model_copy(update={"webhook_allow_private": False})
    with api_client(db_dsn, public_only) as c:
        yield c


def test_http_connections_keep_secrets_in_and_refuse_private_addresses(
    client: TestClient, db: psycopg.Connection
) -> None:
    admin = bearer(client, "admin@home.org")
    body = {
        "kind": "odoo",
        "url": "https://127.0.0.1:8069",
        "secret": "odoo-api-key-0001",
        "database": "prod",
        "login": "bot@example.com",
    }
    refused = client.put("/api/v1/erp/connections/odoo-prod", json=body, headers=admin)
    assert refused.status_code == 422 and refused.json()["field"] == "url"
    body["url"] = "https://93.184.215.14"  # a public address literal: no DNS needed
    made = client.put("/api/v1/erp/connections/odoo-prod", json=body, headers=admin)
    assert made.status_code == 200, made.text
    assert "odoo-api-key-0001" not in made.text and made.json()["database"] == "prod"
    sealed = erp_outbox.connection_secret(db, org=1, connection_id="odoo-prod")
    assert b"odoo-api-key-0001" not in sealed
    audit = db.execute("SELECT new_value::text FROM audit_trail WHERE entity = 'erp_connection'").fetchall()
    assert audit and all("odoo-api-key-0001" not in str(r[0]) for r in audit)

    # replaced without the secret: the stored one stays
    del body["secret"]
    body["events"] = ["shipment.completed", "excursion.closed"]
    kept = client.put("/api/v1/erp/connections/odoo-prod", json=body, headers=admin)
    assert kept.status_code == 200 and kept.json()["events"] == ["shipment.completed", "excursion.closed"]
    assert erp_outbox.connection_secret(db, org=1, connection_id="odoo-prod") == sealed

    missing = client.put(
        "/api/v1/erp/connections/next",
        json={"kind": "erpnext", "url": "https://93.184.215.14", "secret": "s" * 16},
        headers=admin,
    )
    assert missing.status_code == 422 and missing.json()["field"] == "api_key"
    listed = client.get("/api/v1/erp/connections", headers=admin).json()
    assert [c["id"] for c in listed] == ["odoo-prod"] and "secret" not in listed[0]

    viewer = bearer(client, "viewer@home.org")
    assert client.get("/api/v1/erp/connections", headers=viewer).status_code == 403
    tenant = bearer(client, "admin@acme.org")
    assert client.get("/api/v1/erp/connections/odoo-prod", headers=tenant).status_code == 404
    assert client.delete("/api/v1/erp/connections/odoo-prod", headers=tenant).status_code == 404
    assert client.delete("/api/v1/erp/connections/odoo-prod", headers=admin).status_code == 204
    assert client.get("/api/v1/erp/connections/odoo-prod", headers=admin).status_code == 404


def test_http_deliveries_per_record_the_reference_and_the_retry(
    client: TestClient, db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    receiver = WebhookReceiver(status=410)
    with serve(receiver) as url:
        _connect(db, "webhook", url, WEBHOOK_SECRET)
        key = _shipment(db)
        logistics = bearer(client, "logistics@home.org")
        ref = client.put(
            "/api/v1/erp/shipments/S1/reference", json={"erp_ref": "WH/OUT/7"}, headers=logistics
        )
        assert ref.status_code == 200 and ref.json() == {"shipment": "S1", "erp_ref": "WH/OUT/7"}
        bad = client.put(
            "/api/v1/erp/shipments/S1/reference", json={"erp_ref": "WH\u0085OUT"}, headers=logistics
        )
        assert bad.status_code == 422 and bad.json()["field"] == "erp_ref"
        with pytest.raises(psycopg.errors.CheckViolation):  # the column refuses it as well
            db.execute("UPDATE shipments SET erp_ref = 'WH' || chr(133) || 'OUT' WHERE id = 'S1'")
        assert (
            client.put(
                "/api/v1/erp/shipments/NOPE/reference", json={"erp_ref": "x"}, headers=logistics
            ).status_code
            == 404
        )
        alert_id = _raise(db, key)
        _worker(settings, clock).deliver_due(db)

        viewer = bearer(client, "viewer@home.org")
        seen = client.get("/api/v1/erp/deliveries", params={"record": "shipment:S1"}, headers=viewer)
        assert seen.status_code == 200
        (row,) = seen.json()
        assert (row["event"], row["state"], row["attempts"], row["alert_id"]) == (
            "alert.opened",
            "failed",
            1,
            alert_id,
        )
        assert "HTTP 410" in row["last_error"]
        same = client.get(
            "/api/v1/erp/deliveries", params={"record": f"alert:{alert_id}"}, headers=viewer
        ).json()
        assert [d["id"] for d in same] == [row["id"]]
        assert (
            client.get("/api/v1/erp/deliveries", params={"record": "recall:1"}, headers=viewer).json() == []
        )
        assert (
            client.get("/api/v1/erp/deliveries", params={"record": "device:1"}, headers=viewer).status_code
            == 422
        )

        assert client.post(f"/api/v1/erp/deliveries/{row['id']}/retry", headers=viewer).status_code == 403
        admin = bearer(client, "admin@home.org")
        retried = client.post(f"/api/v1/erp/deliveries/{row['id']}/retry", headers=admin)
        assert retried.status_code == 200 and retried.json()["state"] == "pending"
        assert client.post(f"/api/v1/erp/deliveries/{row['id']}/retry", headers=admin).status_code == 409
        tenant = bearer(client, "admin@acme.org")
        assert client.post(f"/api/v1/erp/deliveries/{row['id']}/retry", headers=tenant).status_code == 404
        assert client.get("/api/v1/erp/deliveries", headers=tenant).json() == []
        receiver.status = 200
        _worker(settings, clock).deliver_due(db)
        doc = _check_signature(receiver.received[-1])
        assert doc["records"][0]["ref"] == "WH/OUT/7"


# -- the service ----------------------------------------------------------------------------------------


def test_the_service_wakes_on_the_notify_of_the_change_and_delivers(
    db_dsn: str, db: psycopg.Connection, settings: Settings
) -> None:
    from erp.service import ErpService

    receiver = WebhookReceiver()
    with serve(receiver) as url:
        _connect(db, "webhook", url, WEBHOOK_SECRET)
        key = _shipment(db)
        # a poll far longer than the test: only the NOTIFY sent with the alert can wake it
        with ErpService(dsn=db_dsn, settings=settings, options=ErpOutboxOptions(poll_s=600)):
            wait_for(
                lambda: db.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'LISTEN%'").fetchone(),
                what="the service listening",
            )
            alert_id = _raise(db, key)
            wait_for(lambda: receiver.received, what="the webhook delivery")
            wait_for(
                lambda: erp_outbox.deliveries(db, org=1, alert_id=alert_id)[0].state == "delivered",
                what="the delivery recorded",
            )
        assert _check_signature(receiver.received[0])["alert"]["id"] == alert_id


def test_a_row_taken_over_after_its_lease_is_left_alone_by_its_first_worker(
    db: psycopg.Connection, settings: Settings, clock: Clock
) -> None:
    receiver = WebhookReceiver()
    with serve(receiver) as url:
        _connect(db, "webhook", url, WEBHOOK_SECRET)
        _raise(db, _shipment(db))
        with db.transaction():  # a first worker claims it, then stalls on a slow ERP
            (first,) = erp_outbox.claim_due(db, now=clock_now(clock), limit=10, lease=timedelta(seconds=300))
        clock.advance(301)
        assert _worker(settings, clock).deliver_due(db) == 1  # a second one takes it over
        assert _states(db) == [("alert.opened", "delivered", 2)]
        # the first worker, at the row's turn in its batch, finds it is no longer its own
        until = clock_now(clock) + timedelta(seconds=300)
        assert not erp_outbox.renew_lease(db, delivery_id=first.id, attempts=first.attempts, until=until)
        assert len(receiver.received) == 1
