"""Recalls against a real PostgreSQL: impact by lots, by a logger's window and by an excursion;
consignee acknowledgements and the response time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.domain import Device, Severity
from coldchain.errors import ConflictError, ValidationError
from coldchain.settings import Settings
from erp.imports import run_import
from erp.recalls import RecallRequest, acknowledge, open_recall
from notify.outbox import OutboxOptions, OutboxWorker
from rules.runner import drain
from storage import alerts, auth, registry
from storage.db import open_pool
from storage.recalls import get_recall
from tests.support.identity import bearer, make_user, signature
from tests.support.lots import GTIN as LOT_GTIN
from tests.support.lots import add_leg, write_readings
from tests.support.notify import DRIVER, Clock, Mailbox, add_contact, notify_settings
from tests.support.notify import mailbox as mailbox
from tests.support.notify import stub as stub
from tests.support.twilio_stub import TwilioStub

GTIN = "09506000134352"
GTIN2 = "04006381333931"


def world(db: psycopg.Connection) -> None:
    """Two products, three lots, three shipments (SO-1 with A1 and B1, SO-2 with A1, SO-3 with A2),
    loggers L1 on SO-1 then SO-3, L2 on SO-2, and an excursion on SO-1."""
    files = {
        "products": f"gtin,name,stability_budget_h\n{GTIN},Insulin,72\n{GTIN2},Vaccine,\n",
        "lots": (
            "gtin,lot,expiry,quantity,serials\n"
            f"{GTIN},A1,2027-05-31,1000,S0001..S1000\n{GTIN},A2,,500,X1|X2\n{GTIN2},B1,,50,\n"
        ),
        "shipments": (
            "id,profile,destination,destination_gln,carrier,gtin,lot,quantity\n"
            f"SO-1,2-8C,Hospital B,9520123456788,DHL,{GTIN},A1,400\n"
            f"SO-1,2-8C,Hospital B,9520123456788,DHL,{GTIN2},B1,20\n"
            f"SO-2,2-8C,Pharmacy C,,,{GTIN},A1,100\n"
            f"SO-3,2-8C,Clinic D,,,{GTIN},A2,500\n"
        ),
    }
    for kind, text in files.items():
        assert run_import(db, org=1, kind=kind, data=text.encode(), actor="t").committed
    for device in ("L1", "L2"):
        registry.create_device(db, org=1, device=Device(id=device), actor="t")
    assignments = (
        "device,shipment,from,to\n"
        "L1,SO-1,2026-11-01T00:00:00Z,2026-11-03T00:00:00Z\n"
        "L1,SO-3,2026-11-05T00:00:00Z,2026-11-07T00:00:00Z\n"
        "L2,SO-2,2026-11-01T00:00:00Z,\n"
    )
    assert run_import(db, org=1, kind="assignments", data=assignments.encode(), actor="t").committed
    so1 = db.execute("SELECT key FROM shipments WHERE id = 'SO-1'").fetchone()
    assert so1 is not None
    with db.transaction():
        alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key="e1",
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C",
                shipment_key=so1[0],
                started_at=datetime(2026, 11, 2, tzinfo=UTC),
                peak_c=11.5,
            ),
        )
    db.execute(
        "INSERT INTO lot_budget_state (org_id, gtin, lot, spent_s) VALUES (1, %s, 'A1', 7200)", (GTIN,)
    )


def test_impact_of_a_lot(db: psycopg.Connection) -> None:
    world(db)
    rec = open_recall(
        db,
        org=1,
        request=RecallRequest(reason="seal defect", classification="II", gtin=GTIN, lots=("A1",)),
        actor="qa",
    )
    impact = rec.impact
    assert [s["id"] for s in impact["shipments"]] == ["SO-1", "SO-2"]
    so1 = impact["shipments"][0]
    assert (so1["destination"], so1["destination_gln"], so1["carrier"]) == (
        "Hospital B",
        "9520123456788",
        "DHL",
    )
    assert so1["lots"] == [{"gtin": GTIN, "lot": "A1", "quantity": 400}]  # only the recalled lot's line
    assert [d["id"] for d in so1["devices"]] == ["L1"]
    assert [(e["severity"], e["peak_c"]) for e in so1["excursions"]] == [("alarm", 11.5)]
    assert impact["shipments"][1]["devices"][0]["to"] is None
    (lot,) = impact["lots"]
    assert (lot["quantity"], lot["stability_budget_s"], lot["stability_budget_remaining_s"]) == (
        1000,
        72 * 3600,
        72 * 3600 - 7200,
    )
    assert lot["shipments"] == ["SO-1", "SO-2"]
    assert lot["evidence"] == f"/api/v1/lots/{GTIN}/A1/evidence"
    assert impact["totals"] == {
        "shipments": 2,
        "lots": 1,
        "consignees": 2,
        "quantity": 500,
        "excursions": 1,
        "devices": 2,
    }
    assert [(c.shipment_id, c.consignee, c.quantity) for c in rec.consignees] == [
        ("SO-1", "Hospital B", 400),
        ("SO-2", "Pharmacy C", 100),
    ]
    assert rec.state == "open" and rec.response_time_s is None


def test_lots_named_by_gs1_data_and_unknown_lots(db: psycopg.Connection) -> None:
    world(db)
    rec = open_recall(
        db,
        org=1,
        request=RecallRequest(reason="r", lots=(f"https://id.gs1.org/01/{GTIN}/10/A2", f"(01){GTIN2}(10)B1")),
        actor="qa",
    )
    assert sorted(s["id"] for s in rec.impact["shipments"]) == ["SO-1", "SO-3"]
    with pytest.raises(ValidationError, match="unknown lots"):
        open_recall(db, org=1, request=RecallRequest(reason="r", gtin=GTIN, lots=("NOPE",)), actor="qa")
    with pytest.raises(ValidationError):
        RecallRequest(reason="r")
    with pytest.raises(ValidationError):
        RecallRequest(reason=" ", gtin=GTIN, lots=("A1",))


def test_which_lots_rode_with_a_faulty_logger(db: psycopg.Connection) -> None:
    world(db)
    request = RecallRequest(
        reason="logger L1 out of calibration",
        device="L1",
        start=datetime(2026, 11, 2, tzinfo=UTC),
        end=datetime(2026, 11, 6, tzinfo=UTC),
    )
    rec = open_recall(db, org=1, request=request, actor="qa")
    lots = {(lot["gtin"], lot["lot"]) for lot in rec.impact["lots"]}
    assert lots == {(GTIN, "A1"), (GTIN2, "B1"), (GTIN, "A2")}
    # A1 also went out on SO-2 (with L2): every shipment of a recalled lot is reached.
    assert sorted(s["id"] for s in rec.impact["shipments"]) == ["SO-1", "SO-2", "SO-3"]
    narrow = RecallRequest(
        reason="r",
        device="L1",
        start=datetime(2026, 11, 4, tzinfo=UTC),
        end=datetime(2026, 11, 8, tzinfo=UTC),
    )
    assert {lot["lot"] for lot in open_recall(db, org=1, request=narrow, actor="qa").impact["lots"]} == {"A2"}
    with pytest.raises(ValidationError, match="unknown device"):
        open_recall(
            db,
            org=1,
            request=RecallRequest(reason="r", device="L9", start=narrow.start, end=narrow.end),
            actor="qa",
        )


def test_recall_by_excursion_and_the_response_time(db: psycopg.Connection) -> None:
    world(db)
    alert_id = db.execute("SELECT id FROM alerts").fetchone()
    assert alert_id is not None
    rec = open_recall(db, org=1, request=RecallRequest(reason="excursion", alert_id=alert_id[0]), actor="qa")
    assert {lot["lot"] for lot in rec.impact["lots"]} == {"A1", "B1"}
    first, second = rec.consignees[0], rec.consignees[1]
    rec = acknowledge(
        db, org=1, recall_id=rec.id, consignee_id=first.id, quarantined=400, returned=None, actor="hospital"
    )
    assert rec.response_time_s is None
    assert rec.consignees[0].quarantined == 400 and rec.consignees[0].acknowledged_at is not None
    rec = acknowledge(
        db, org=1, recall_id=rec.id, consignee_id=second.id, quarantined=None, returned=100, actor="pharmacy"
    )
    assert (
        rec.all_acknowledged_at is not None and rec.response_time_s is not None and rec.response_time_s >= 0
    )
    with pytest.raises(ConflictError):
        acknowledge(
            db, org=1, recall_id=rec.id, consignee_id=second.id, quarantined=None, returned=1, actor="x"
        )


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=2) as pool:
        app = create_app(Settings(database_url=db_dsn), pool=pool)
        with TestClient(app) as c:
            yield c


def test_recalls_over_http(client: TestClient, db: psycopg.Connection) -> None:
    world(db)
    qa = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="qa", role=Role.QA, actor="t")}
    erp = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="t")}
    body = {"gtin": GTIN, "lots": ["A1"], "reason": "seal defect", "classification": "II"}
    assert client.post("/api/v1/recalls", json=body, headers=erp).status_code == 403
    res = client.post("/api/v1/recalls", json=body, headers=qa)
    assert res.status_code == 201, res.text
    recall = res.json()
    assert recall["impact"]["shipments"][0]["excursions"][0]["peak_c"] == 11.5
    assert recall["impact"]["lots"][0]["stability_budget_remaining_s"] == 72 * 3600 - 7200
    got = client.get(f"/api/v1/recalls/{recall['id']}", headers=erp).json()
    assert got["consignees"] == recall["consignees"]
    res = client.post(
        "/api/v1/recalls",
        json={
            "device": "L1",
            "from": "2026-11-04T00:00:00Z",
            "to": "2026-11-08T00:00:00Z",
            "reason": "drift",
        },
        headers=qa,
    )
    assert [lot["lot"] for lot in res.json()["impact"]["lots"]] == ["A2"]
    assert client.post("/api/v1/recalls", json={"reason": "x"}, headers=qa).status_code == 422
    assert (
        client.post("/api/v1/recalls", json={**body, "classification": "IV"}, headers=qa).status_code == 422
    )
    consignee = recall["consignees"][0]["id"]
    res = client.post(
        f"/api/v1/recalls/{recall['id']}/consignees/{consignee}/acknowledge",
        json={"quarantined": 400},
        headers=qa,
    )
    assert res.status_code == 200 and res.json()["consignees"][0]["quarantined"] == 400
    assert client.get("/api/v1/recalls/999999", headers=qa).status_code == 404


def test_recall_by_serials(db: psycopg.Connection) -> None:
    world(db)
    rec = open_recall(
        db, org=1, request=RecallRequest(reason="r", gtin=GTIN, serials=("S0500", "X2")), actor="qa"
    )
    assert {lot["lot"] for lot in rec.impact["lots"]} == {"A1", "A2"}
    assert rec.criteria == {"gtin": GTIN, "serials": ["S0500", "X2"]}
    only_a1 = open_recall(
        db, org=1, request=RecallRequest(reason="r", gtin=GTIN, serials=("S1000",)), actor="qa"
    )
    assert [lot["lot"] for lot in only_a1.impact["lots"]] == ["A1"]
    for outside in ("S1001", "S050", "Z1"):
        with pytest.raises(ValidationError, match="reaches no lot"):
            open_recall(
                db, org=1, request=RecallRequest(reason="r", gtin=GTIN, serials=(outside,)), actor="qa"
            )
    with pytest.raises(ValidationError, match="need the gtin"):
        RecallRequest(reason="r", serials=("S1",))


# -- notifying consignees, acknowledging by link, closing under a signature, list and KPIs ------


def _worker(settings: Settings) -> OutboxWorker:
    return OutboxWorker(settings=settings, clock_ms=Clock(), options=OutboxOptions(send_threads=2))


def test_consignees_notified_through_the_outbox_acknowledge_by_link_and_qa_closes_with_a_signature(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub, mailbox: tuple[Mailbox, int]
) -> None:
    world(db)
    box, smtp_port = mailbox
    settings = notify_settings(db_dsn, stub, public_url="https://cc.example", smtp_port=smtp_port)
    # Hospital B's desk by its GLN (SMS and e-mail), Pharmacy C by name; a disabled and an
    # unrelated contact are not told.
    add_contact(db, "hosp-b", (), sites=("9520123456788",), phone=DRIVER, email="desk@hospital-b.example")
    add_contact(db, "pharm-c", (), customers=("Pharmacy C",), email="qa@pharmacy-c.example")
    add_contact(db, "clinic-d", (), sites=("Clinic D",), email="clinic@d.example")
    add_contact(db, "old-b", (), sites=("9520123456788",), email="old@hospital-b.example")
    db.execute("UPDATE notify_contacts SET disabled_at = now() WHERE id = 'old-b'")
    make_user(db, "qa.lead@home.org", ["qa"], name="Quinn QA")
    key = auth.create_token(db, org=1, name="qa-key", role=Role.QA, actor="t")
    with open_pool(db_dsn, max_size=2) as pool, TestClient(create_app(settings, pool=pool)) as client:
        qa = bearer(client, "qa.lead@home.org")
        body = {"gtin": GTIN, "lots": ["A1"], "reason": "seal defect", "classification": "II"}
        res = client.post("/api/v1/recalls", json=body, headers=qa)
        assert res.status_code == 201, res.text
        recall = res.json()
        assert recall["state"] == "notifying"
        by_shipment = {c["shipment"]: c for c in recall["consignees"]}
        assert sorted((n["channel"], n["state"]) for n in by_shipment["SO-1"]["notifications"]) == [
            ("email", "pending"),
            ("sms", "pending"),
        ]
        assert by_shipment["SO-2"]["notifications"] == [{"channel": "email", "state": "pending"}]
        assert all(c["notified_at"] is None for c in recall["consignees"])

        with psycopg.connect(db_dsn, autocommit=True) as conn:
            worker = _worker(settings)
            try:
                assert worker.deliver_due(conn) == 3
            finally:
                worker.close()
        (sms,) = stub.requests
        text = sms.field("Body") or ""
        assert f"RECALL {recall['id']} class II" in text and f"{GTIN} lot A1: 400" in text
        assert "https://cc.example/recall-ack/" in text
        mails = {str(m["To"]): m for m in box.messages}
        assert set(mails) == {"desk@hospital-b.example", "qa@pharmacy-c.example"}
        pharmacy = mails["qa@pharmacy-c.example"].get_body(("plain",))
        assert pharmacy is not None
        content = pharmacy.get_content()
        assert f"{GTIN} lot A1: 100" in content and "seal defect" in content
        link = next(w for w in content.split() if w.startswith("https://cc.example/recall-ack/"))
        path = link.removeprefix("https://cc.example")

        got = client.get(f"/api/v1/recalls/{recall['id']}", headers=qa).json()
        assert all(c["notified_at"] is not None for c in got["consignees"])
        states = {c["shipment"]: sorted(n["state"] for n in c["notifications"]) for c in got["consignees"]}
        assert states == {"SO-1": ["queued", "sent"], "SO-2": ["sent"]}

        # The link: a page that changes nothing, then the consignee's answer, once.
        page = client.get(path)
        assert page.status_code == 200 and "Acknowledge the recall" in page.text
        assert client.post(path, data={"quarantined": "lots"}).status_code == 422
        tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
        assert client.post(tampered, data={"quarantined": "100"}).status_code == 403
        # Not yet answered by everyone: QA cannot close.
        closing = {"comment": "all units back", "signature": signature("approval")}
        res = client.post(f"/api/v1/recalls/{recall['id']}/close", json=closing, headers=qa)
        assert res.status_code == 409, res.text
        answered = client.post(path, data={"quarantined": "100", "returned": ""})
        assert answered.status_code == 200, answered.text
        assert client.post(path, data={"quarantined": "100"}).status_code == 409  # single use
        got = client.get(f"/api/v1/recalls/{recall['id']}", headers=qa).json()
        so2 = next(c for c in got["consignees"] if c["shipment"] == "SO-2")
        assert so2["quarantined"] == 100 and so2["acknowledged_by"] == "contact pharm-c (link)"
        res = client.post(
            f"/api/v1/recalls/{recall['id']}/consignees/{by_shipment['SO-1']['id']}/acknowledge",
            json={"quarantined": 380, "returned": 20},
            headers=qa,
        )
        assert res.status_code == 200 and res.json()["response_time_s"] is not None

        # Closing: a signature is required, a machine cannot sign, a wrong password is refused.
        url = f"/api/v1/recalls/{recall['id']}/close"
        assert client.post(url, json={"comment": "x"}, headers=qa).status_code == 422
        machine = {"Authorization": f"Bearer {key}"}
        assert client.post(url, json=closing, headers=machine).status_code == 403
        wrong = {"comment": "x", "signature": signature("approval", password="not the password")}
        assert client.post(url, json=wrong, headers=qa).status_code == 401
        res = client.post(url, json=closing, headers=qa)
        assert res.status_code == 200, res.text
        closed = res.json()
        assert closed["state"] == "closed" and closed["closed_by"] == "qa.lead@home.org"
        (sig,) = closed["signatures"]
        assert (sig["signer"], sig["meaning"], sig["action"]) == ("Quinn QA", "approval", "close")
        assert client.post(url, json=closing, headers=qa).status_code == 409
        shown = client.get(f"/api/v1/recalls/{recall['id']}", headers=qa).json()
        assert shown["signatures"][0]["status"] == "valid"
        assert shown["signatures"][0]["record_hash"] == sig["record_hash"]
        # A change behind the signature's back shows it broken.
        db.execute(
            "UPDATE recall_consignees SET returned = 0 WHERE recall_id = %s AND returned = 20",
            (recall["id"],),
        )
        shown = client.get(f"/api/v1/recalls/{recall['id']}", headers=qa).json()
        assert shown["signatures"][0]["status"] == "broken"

        # The list by state and the KPI.
        other = client.post("/api/v1/recalls", json={**body, "lots": ["A2"]}, headers=qa).json()
        assert other["state"] == "notifying"  # Clinic D's contact names the site by its name
        listed = client.get("/api/v1/recalls", params={"state": "closed"}, headers=qa).json()
        assert [r["id"] for r in listed] == [recall["id"]]
        assert listed[0]["acknowledged"] == listed[0]["consignees"] == 2
        everything = client.get("/api/v1/recalls", headers=qa).json()
        assert [r["id"] for r in everything] == [other["id"], recall["id"]]
        kpis = client.get("/api/v1/recalls/kpis", headers=qa).json()
        assert (kpis["recalls"], kpis["closed"], kpis["answered"]) == (2, 1, 1)
        assert kpis["median_response_time_s"] == closed["response_time_s"]


def test_the_impact_shows_each_lots_mkt_equal_to_the_lot_figures_from_the_readings(
    db_dsn: str, db: psycopg.Connection
) -> None:
    """The recall's MKT per lot comes from the rules' running MKT per series (never the readings),
    and equals the lot page's MKT worked out from every reading: over two legs, the second with
    two loggers (the worse one counts), fed in several batches, one of them late."""
    add_leg(db, "LEG-1", ["T1"], 0, 600)
    add_leg(db, "LEG-2", ["T2", "T3"], 600, 1200)
    rng = np.random.default_rng(7)
    write_readings(db, "T1", np.arange(0, 200), 5 + rng.random(200), queue=True)
    drain(db)
    write_readings(db, "T1", np.arange(300, 500), 9 + rng.random(200), queue=True)
    drain(db)
    write_readings(db, "T1", np.arange(200, 300), 4 + rng.random(100), queue=True)  # late: starts over
    write_readings(db, "T2", np.arange(600, 700), 6 + 4 * rng.random(100), queue=True)
    write_readings(db, "T3", np.arange(600, 700), 3 + rng.random(100), queue=True)
    drain(db)
    write_readings(db, "T2", np.arange(700, 760), 12 + rng.random(60), queue=True)
    drain(db)
    rec = open_recall(db, org=1, request=RecallRequest(reason="r", gtin=LOT_GTIN, lots=("A1",)), actor="qa")
    (lot,) = rec.impact["lots"]
    token = auth.create_token(db, org=1, name="v", role=Role.VIEWER, actor="t")
    with (
        open_pool(db_dsn, max_size=2) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as c,
    ):
        page = c.get(f"/api/v1/lots/{LOT_GTIN}/A1", headers={"Authorization": f"Bearer {token}"}).json()
    assert page["mkt_c"] is not None and lot["mkt_c"] == pytest.approx(page["mkt_c"], abs=0.002)
    assert lot["disposition"] == "pending"  # no QA decision on the lot yet
    # A series the rules have not evaluated since MKT was kept: the lot's MKT is unknown, not wrong.
    db.execute("UPDATE rule_series_state SET mkt_acc = NULL, mkt_log_mean = NULL, mkt_w_ms = NULL")
    rec = open_recall(db, org=1, request=RecallRequest(reason="r", gtin=LOT_GTIN, lots=("A1",)), actor="qa")
    assert rec.impact["lots"][0]["mkt_c"] is None


def test_a_refused_recall_message_is_retried_and_the_consignee_is_notified_only_once_accepted(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub
) -> None:
    world(db)
    settings = notify_settings(db_dsn, stub)  # no PUBLIC_URL: the message has no link
    add_contact(db, "hosp-b", (), sites=("9520123456788",), phone=DRIVER)
    rec = open_recall(
        db, org=1, request=RecallRequest(reason="seal defect", gtin=GTIN2, lots=("B1",)), actor="qa"
    )
    assert rec.state == "notifying" and [c.shipment_id for c in rec.consignees] == ["SO-1"]
    stub.fail_next(503, code=20503)
    clock = Clock()
    worker = OutboxWorker(
        settings=settings, clock_ms=clock, options=OutboxOptions(send_threads=1, backoff_base_s=30.0)
    )
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            assert worker.deliver_due(conn) == 1
            (row,) = db.execute(
                "SELECT state, attempts, last_error, next_attempt_at FROM notify_outbox WHERE kind = 'recall'"
            ).fetchall()
            assert (row[0], row[1]) == ("pending", 1) and "503" in (row[2] or "")
            assert get_recall(db, org=1, recall_id=rec.id).consignees[0].notified_at is None
            assert worker.deliver_due(conn) == 0  # not before its time
            clock.set(row[3] + timedelta(seconds=1))
            assert worker.deliver_due(conn) == 1
    finally:
        worker.close()
    assert len(stub.requests) == 2
    body = stub.requests[-1].field("Body") or ""
    assert "lot B1: 20" in body and "recall-ack" not in body
    (state,) = db.execute("SELECT state FROM notify_outbox WHERE kind = 'recall'").fetchone() or ("",)
    assert state == "queued"
    assert get_recall(db, org=1, recall_id=rec.id).consignees[0].notified_at is not None
