"""A lot's disposition by QA under a Part 11 signature, against a real PostgreSQL: signed and
shown with its record hash, refused without the right person, password or meaning, released only
once every excursion is closed, final when rejected, shown broken after an edit behind the
application's back, and carried into the audit trail, every evidence format and a recall."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from api.app import create_app
from coldchain.access import Role
from coldchain.domain import Disposition, Severity
from coldchain.esignature import record_hash
from coldchain.settings import Settings
from storage import alerts, audit, auth, registry
from storage.db import open_pool
from tests.support.identity import bearer, make_user, signature
from tests.support.lots import GTIN, add_leg

SCHEMA = Path(__file__).parent.parent / "evidence" / "standards" / "EPCIS-JSON-Schema.json"
LOT = f"/api/v1/lots/{GTIN}/A1"


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection, tmp_path: Path) -> Iterator[TestClient]:
    """The API as the services run it, connected as coldchain_app (which may only insert decisions)."""
    db.execute("ALTER ROLE coldchain_app LOGIN")
    app_dsn = db_dsn.replace("postgres@", "coldchain_app@", 1)
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data")
    with open_pool(app_dsn, max_size=4) as pool, TestClient(create_app(settings, pool=pool)) as c:
        yield c


@pytest.fixture
def qa(client: TestClient, db: psycopg.Connection) -> dict[str, str]:
    add_leg(db, "LEG-1", ["L1"], 0, 600)
    make_user(db, "ann@x.org", ["qa"], name="Ann Example")
    return bearer(client, "ann@x.org")


def _decide(client: TestClient, headers: dict[str, str], decision: str, **sig: str) -> Any:
    meaning = {"release": "release", "reject": "rejection", "quarantine": "responsibility"}[decision]
    body = {"disposition": decision, "comment": f"{decision}: reviewed the evidence",
            "signature": signature(**{"meaning": meaning, **sig})}
    return client.post(f"{LOT}/disposition", json=body, headers=headers)


def _excursion(db: psycopg.Connection) -> int:
    key = registry.get_shipment(db, org=1, shipment_id="LEG-1").key
    with db.transaction():
        alert_id, _ = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1, episode_key="x1", kind="single", severity=Severity.ALARM,
                message="above 8 °C for 30 min", started_at=datetime.now(UTC), shipment_key=key,
            ),
        )
    return alert_id


def test_a_signed_disposition_is_stored_with_its_hash_shown_audited_and_breaks_when_edited(
    client: TestClient, db: psycopg.Connection, db_dsn: str, qa: dict[str, str]
) -> None:
    assert client.get(LOT, headers=qa).json()["disposition"] == {"state": "pending", "history": []}
    res = _decide(client, qa, "quarantine")
    assert res.status_code == 201, res.text
    res = _decide(client, qa, "release")
    assert res.status_code == 201, res.text
    shown = res.json()
    assert shown["state"] == "release"
    first, second = shown["history"]
    assert (first["previous"], first["state"], second["previous"], second["state"]) == (
        None, "quarantine", "quarantine", "release")
    [sig] = second["signatures"]
    assert (sig["signer"], sig["user"], sig["meaning"], sig["status"], sig["action"]) == (
        "Ann Example", "ann@x.org", "release", "valid", "lot_release")
    # The hash is the SHA-256 of the decision's canonical record, as stored.
    row = db.execute(
        "SELECT id, gtin, lot, state, previous, comment, decided_by, decided_at FROM lot_dispositions"
        " WHERE id = %s", (second["id"],)
    ).fetchone()
    assert row is not None
    expected = record_hash({
        "entity": "lot_disposition", "id": row[0], "gtin": row[1], "lot": row[2], "state": row[3],
        "previous": row[4], "comment": row[5], "decided_by": row[6], "decided_at": row[7],
    })
    assert sig["record_hash"] == expected
    assert client.get(LOT, headers=qa).json()["disposition"] == shown

    # The audit trail has old and new state, and the signature with its manifestation.
    trail = audit.trail(db, 1, "lot", f"{GTIN}/A1")
    changes = [(e["old"], e["new"]["state"]) for e in trail if e["action"] == "disposition"]
    assert changes == [({"state": "pending"}, "quarantine"), ({"state": "quarantine"}, "release")]
    [signed] = [e for e in audit.trail(db, 1, "lot_disposition", str(second["id"])) if e["action"] == "sign"]
    assert signed["new"]["record_hash"] == sig["record_hash"] and "Ann Example" in signed["reason"]

    # The application cannot rewrite a decision ...
    with psycopg.connect(db_dsn.replace("postgres@", "coldchain_app@", 1)) as app:
        assert app.execute("SELECT current_user").fetchone() == ("coldchain_app",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("UPDATE lot_dispositions SET state = 'reject'")
    # ... and an edit by the superuser shows: the signature is broken on every read.
    db.execute(
        "UPDATE lot_dispositions SET comment = 'released without review' WHERE id = %s", (second["id"],)
    )
    history = client.get(LOT, headers=qa).json()["disposition"]["history"]
    assert [s["status"] for h in history for s in h["signatures"]] == ["valid", "broken"]
    assert "changed" in history[1]["signatures"][0]["reason"]
    evidence = client.get(f"{LOT}/evidence", headers=qa).json()
    assert [s["status"] for h in evidence["disposition"]["history"] for s in h["signatures"]] == [
        "valid", "broken"]


def test_who_may_decide_and_how_a_decision_must_be_signed(
    client: TestClient, db: psycopg.Connection, qa: dict[str, str]
) -> None:
    key = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="qa-bot", role=Role.QA, actor="t")}
    res = _decide(client, key, "quarantine")
    assert res.status_code == 403 and "API key cannot sign" in res.json()["message"]
    make_user(db, "root@x.org", ["admin"])
    assert _decide(client, bearer(client, "root@x.org"), "quarantine").status_code == 403
    make_user(db, "lee@x.org", ["logistics"])
    assert _decide(client, bearer(client, "lee@x.org"), "quarantine").status_code == 403
    res = _decide(client, qa, "quarantine", password="not the password")
    assert res.status_code == 401 and "signature is refused" in res.json()["message"]
    wrong = client.post(f"{LOT}/disposition", headers=qa, json={
        "disposition": "release", "comment": "ok", "signature": signature("approval")})
    assert wrong.status_code == 422 and wrong.json()["field"] == "signature.meaning"
    unsigned = client.post(f"{LOT}/disposition", headers=qa, json={"disposition": "release", "comment": "ok"})
    assert unsigned.status_code == 422 and unsigned.json()["field"] == "signature"
    blank = client.post(f"{LOT}/disposition", headers=qa, json={
        "disposition": "quarantine", "comment": "   ", "signature": signature("responsibility")})
    assert blank.status_code == 422
    unknown = client.post(f"/api/v1/lots/{GTIN}/NOPE/disposition", headers=qa, json={
        "disposition": "quarantine", "comment": "x", "signature": signature("responsibility")})
    assert unknown.status_code == 404
    # Nothing was decided or signed by any refused call.
    assert db.execute("SELECT count(*) FROM lot_dispositions").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM signatures").fetchone() == (0,)
    # A person holding admin and qa may.
    make_user(db, "both@x.org", ["admin", "qa"])
    assert _decide(client, bearer(client, "both@x.org"), "quarantine").status_code == 201


def test_release_waits_for_every_excursion_and_a_rejection_is_final(
    client: TestClient, db: psycopg.Connection, qa: dict[str, str]
) -> None:
    alert_id = _excursion(db)
    assert _decide(client, qa, "quarantine").status_code == 201
    assert _decide(client, qa, "quarantine").status_code == 409  # the same state twice
    blocked = _decide(client, qa, "release")
    assert blocked.status_code == 409 and f"{alert_id} (open)" in blocked.json()["message"]
    alerts.transition(db, org=1, alert_id=alert_id, action="resolve", actor="ops", comment="door shut")
    assert f"{alert_id} (resolved)" in _decide(client, qa, "release").json()["message"]
    alerts.transition(db, org=1, alert_id=alert_id, action="close", actor="ann@x.org", comment="MKT ok",
                      disposition=Disposition.RELEASE)
    assert _decide(client, qa, "release").status_code == 201
    assert _decide(client, qa, "reject").status_code == 409  # a released lot is quarantined first
    assert _decide(client, qa, "quarantine").status_code == 201
    assert _decide(client, qa, "reject").status_code == 201
    for decision in ("quarantine", "release"):
        final = _decide(client, qa, decision)
        assert final.status_code == 409 and "final" in final.json()["message"]
    lot = client.get(LOT, headers=qa).json()["disposition"]
    assert lot["state"] == "reject"
    assert [h["state"] for h in lot["history"]] == ["quarantine", "release", "quarantine", "reject"]


def test_an_excursion_closed_as_reject_blocks_a_release(
    client: TestClient, db: psycopg.Connection, qa: dict[str, str]
) -> None:
    alert_id = _excursion(db)
    alerts.transition(db, org=1, alert_id=alert_id, action="resolve", actor="ops")
    alerts.transition(db, org=1, alert_id=alert_id, action="close", actor="ann@x.org", comment="too warm",
                      disposition=Disposition.REJECT)
    res = _decide(client, qa, "release")
    assert res.status_code == 409 and f"{alert_id} (closed as reject)" in res.json()["message"]
    assert _decide(client, qa, "reject").status_code == 201


def test_the_disposition_is_in_every_evidence_format_and_the_recall_impact(
    client: TestClient, db: psycopg.Connection, qa: dict[str, str]
) -> None:
    assert _decide(client, qa, "quarantine").status_code == 201
    doc = client.get(f"{LOT}/evidence", headers=qa).json()
    disposition = doc["disposition"]
    assert (disposition["state"], disposition["cbv_disposition"]) == ("quarantine", "non_sellable_other")
    [decision] = disposition["history"]
    assert decision["comment"] == "quarantine: reviewed the evidence"
    assert decision["signatures"][0]["signer"] == "Ann Example"
    assert decision["signatures"][0]["status"] == "valid"
    # The shipment's evidence names the state of each lot it carried.
    shipment = client.get("/api/v1/shipments/LEG-1/evidence", headers=qa).json()
    assert [(x["lot"], x["disposition"]) for x in shipment["subject"]["lots"]] == [("A1", "quarantine")]

    # PDF: a disposition section and the signer in the signature block.
    pdf = client.get(f"{LOT}/evidence?format=pdf", headers=qa)
    assert pdf.status_code == 200
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Disposition" in text and "pending -> quarantine" in text
    assert "non_sellable_other" in text and "quarantine: reviewed the evidence" in text
    assert "Ann Example <ann@x.org>" in text and "responsibility" in text
    assert "No electronic signature recorded" not in text

    # EPCIS: an ObjectEvent with the CBV disposition, valid against GS1's schema.
    epcis = client.get(f"{LOT}/evidence?format=epcis", headers=qa).json()
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()), format_checker=checker)
    assert list(validator.iter_errors(epcis)) == []
    [event] = [e for e in epcis["epcisBody"]["eventList"] if e.get("bizStep") == "inspecting"]
    assert event["disposition"] == "non_sellable_other"
    assert event["quantityList"] == [{"epcClass": f"https://id.gs1.org/01/{GTIN}/10/A1"}]
    details = event["cc:disposition"]
    assert details["cc:decision"] == "quarantine" and details["cc:previous"] == "pending"
    assert details["cc:signatures"][0]["cc:recordHash"] == decision["signatures"][0]["record_hash"]
    assert {"cc": "urn:coldchain:epcis:"} in epcis["@context"]

    # The bundle carries the decisions as CSV too.
    zipped = client.get(f"{LOT}/evidence?format=bundle", headers=qa)
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        rows = zf.read("disposition.csv").decode().splitlines()
        manifest = json.loads(zf.read("manifest.json"))
    assert rows[0].startswith("decision,previous,cbv_disposition,comment")
    assert rows[1].startswith(
        "quarantine,pending,non_sellable_other,quarantine: reviewed the evidence,ann@x.org"
    )
    assert "disposition.csv" in manifest["files"]

    # A recall of the lot shows its state in the impact.
    res = client.post("/api/v1/recalls", headers=qa, json={
        "reason": "seal defect", "classification": "II", "gtin": GTIN, "lots": ["A1"]})
    assert res.status_code == 201, res.text
    assert [(x["lot"], x["disposition"]) for x in res.json()["impact"]["lots"]] == [("A1", "quarantine")]
