"""POST /api/v1/epcis/capture against a real PostgreSQL: GS1's own sensor examples, readings that
the API shows and the rules runner alerts on, shipping and receiving that move a shipment, every
refusal listed with nothing stored, and a second capture that stores nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.epcis import MAX_CAPTURE_BYTES
from coldchain.access import Role
from coldchain.domain import Device
from coldchain.epc import parse_epc
from coldchain.gs1 import GS1Error
from coldchain.settings import Settings
from erp.epcis_capture import CAPTURE_SEQ_BASE, event_key
from evidence.epcis_schema import EPCIS_CONTEXT, document_problems, reference_validator, validator
from rules.runner import drain
from storage import auth, registry
from storage.db import open_pool
from tests.support.lots import GTIN, T0, add_leg

EXAMPLES = Path(__file__).parent / "data" / "epcis"
SSCC_URN = "urn:epc:id:sscc:0614141.1234567890"
SSCC = "106141412345678908"
SSCC_LINK = f"https://id.gs1.org/00/{SSCC}"
ORIGIN = "urn:epc:id:sgln:4012345.00005.0"  # GLN 4012345000054
DEST = "https://id.gs1.org/414/4012345000061"
DEVICE = "urn:coldchain:device:"
COUNTED = (
    "readings",
    "batches",
    "epcis_captures",
    "epcis_events",
    "shipment_movements",
    "shipment_units",
    "shipment_lots",
    "audit_trail",
    "dead_letters",
)


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=4) as pool:
        app = create_app(Settings(database_url=db_dsn), pool=pool)
        with TestClient(app) as c:
            yield c


@pytest.fixture
def erp(db: psycopg.Connection) -> dict[str, str]:
    token = auth.create_token(db, org=1, name="partner WMS", role=Role.ERP, actor="test")
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/ld+json"}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _document(*events: dict[str, Any], created: str = "2026-11-02T00:00:00Z") -> dict[str, Any]:
    return {
        "@context": [EPCIS_CONTEXT, {"ex": "https://example.org/epcis/"}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": created,
        "epcisBody": {"eventList": list(events)},
    }


def _sensor_event(device: str, minutes: list[int], temps: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": "sensor_reporting",
        "eventTime": _iso(T0 + max(minutes) * 60_000),
        "eventTimeZoneOffset": "+00:00",
        "quantityList": [{"epcClass": f"https://id.gs1.org/01/{GTIN}/10/A1"}],
        "sensorElementList": [
            {
                "sensorMetadata": {
                    "time": _iso(T0 + m * 60_000),
                    "deviceID": f"urn:coldchain:device:{device}",
                },
                "sensorReport": [{"type": "Temperature", "value": c, "uom": "CEL"}],
            }
            for m, c in zip(minutes, temps, strict=True)
        ],
        **extra,
    }


def _movement(
    step: str,
    at_min: int,
    *,
    epcs: list[str],
    place: str,
    shipment: str | None = None,
    lots: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": step if step == "shipping" else f"https://ref.gs1.org/cbv/BizStep-{step}",
        "disposition": "in_transit" if step == "shipping" else "in_progress",
        "eventTime": _iso(T0 + at_min * 60_000),
        "eventTimeZoneOffset": "+01:00",
        "epcList": epcs,
        "readPoint" if step == "shipping" else "bizLocation": {"id": place},
    }
    if shipment is not None:
        event["bizTransactionList"] = [
            {"type": "bol", "bizTransaction": f"urn:coldchain:shipment:{shipment}"}
        ]
    if lots:
        event["quantityList"] = lots
    return event


def _post(client: TestClient, h: dict[str, str], doc: Any) -> tuple[int, dict[str, Any]]:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    res = client.post("/api/v1/epcis/capture", headers=h, content=body)
    return res.status_code, res.json()


def _counts(db: psycopg.Connection) -> dict[str, int]:
    out = {}
    for table in COUNTED:
        row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        out[table] = int(row[0])
    return out


# --- identifiers and the validator, without a database ---------------------------------------


def test_urns_and_digital_links_give_the_same_gs1_keys() -> None:
    assert parse_epc(SSCC_URN).sscc == parse_epc(SSCC_LINK).sscc == SSCC
    assert (
        parse_epc("urn:epc:id:sgln:4012345.00005.0").gln
        == parse_epc("https://id.gs1.org/414/4012345000054").gln
    )
    lgtin = parse_epc("urn:epc:class:lgtin:4012345.012345.998877")
    assert (lgtin.kind, lgtin.gtin, lgtin.lot) == ("lgtin", "04012345123456", "998877")
    assert parse_epc("https://id.gs1.org/01/04012345123456/10/998877") == type(lgtin)(
        "lgtin", "https://id.gs1.org/01/04012345123456/10/998877", gtin="04012345123456", lot="998877"
    )
    sgtin = parse_epc("urn:epc:id:sgtin:4012345.011111.9876")
    assert (sgtin.gtin, sgtin.serial) == ("04012345111118", "9876")
    assert (
        parse_epc("urn:epc:id:giai:4000001.111").giai == parse_epc("https://id.gs1.org/8004/4000001111").giai
    )
    assert parse_epc("urn:coldchain:device:D1").kind == "other"
    with pytest.raises(GS1Error):
        parse_epc("urn:epc:id:sscc:0614141.12345")  # 12 digits, not 17


def test_gs1_examples_pass_and_every_kind_of_fault_is_listed() -> None:
    examples = sorted(EXAMPLES.glob("*.jsonld"))
    assert len(examples) == 18
    for path in examples:
        assert document_problems(json.loads(path.read_text())) == [], path.name

    doc = json.loads((EXAMPLES / "SensorDataExample1.jsonld").read_text())
    event = doc["epcisBody"]["eventList"][0]
    event["eventTime"] = "2019-04-02 15:00"
    event["bizStep"] = "loafing"
    event["disposition"] = "https://ref.gs1.org/cbv/Disp-sunny"
    event["colour"] = "blue"
    event["example:colour"] = "blue"  # the prefix is defined in this document's @context
    event["undefined:colour"] = "blue"
    doc["@context"] = [{"example": "http://ns.example.com/epcis/"}]  # no EPCIS context
    fields = {(p.field, p.message.split(" ")[0]) for p in document_problems(doc)}
    assert fields == {
        ("@context", "the"),
        ("epcisBody.eventList[0].eventTime", '"2019-04-02'),
        ("epcisBody.eventList[0].bizStep", "bizStep"),
        ("epcisBody.eventList[0].disposition", "'https://ref.gs1.org/cbv/Disp-sunny'"),
        ("epcisBody.eventList[0].colour", "extension"),
        ("epcisBody.eventList[0].undefined:colour", "extension"),
    }


def test_the_fast_schema_engine_agrees_with_the_python_reference() -> None:
    """jsonschema-rs (the capture's engine) and Python jsonschema with rfc3339-validator give the
    same verdict, at the same places, on GS1's examples and on broken variants of them."""
    fast, reference = validator(), reference_validator()
    broken: list[Any] = []
    for path in sorted(EXAMPLES.glob("*.jsonld")):
        doc = json.loads(path.read_text())
        broken.append(doc)
        for change in ("time", "leap", "offset", "uri", "step", "missing", "type"):
            d = json.loads(path.read_text())
            e = d["epcisBody"]["eventList"][0]
            if change == "time":
                e["eventTime"] = e["eventTime"].replace("T", " ")
            elif change == "leap":
                e["eventTime"] = "2019-02-29T10:00:00Z"
            elif change == "offset":
                e["eventTimeZoneOffset"] = "+15:00"
            elif change == "uri":
                e["readPoint"] = {"id": "dock door 4"}
            elif change == "step":
                e["bizStep"] = "loafing"
            elif change == "missing":
                del e["eventTime"]
            else:
                e["action"] = "TWIRL"
            broken.append(d)
    for d in broken:
        rs = sorted(json.dumps(list(err.instance_path)) for err in fast.iter_errors(d))
        py = sorted(json.dumps(list(err.absolute_path)) for err in reference.iter_errors(d))
        assert sorted(set(rs)) == sorted(set(py))
    assert sum(1 for d in broken if not fast.is_valid(d)) == len(broken) - 18


def test_event_key_is_the_event_id_or_the_hash_of_the_canonical_event() -> None:
    event = _sensor_event("D1", [1], [5.0])
    key = event_key(event)
    assert key.startswith("ni:///sha-256;") and key.endswith("?ver=CBV2.0")
    reordered = dict(reversed(list(event.items())))
    assert event_key({**reordered, "recordTime": "2026-11-03T00:00:00Z"}) == key
    assert event_key({**event, "eventTimeZoneOffset": "+01:00"}) != key
    assert event_key({**event, "eventID": "urn:uuid:6d2a3b5c-1111-4222-8333-944455556666"}) == (
        "urn:uuid:6d2a3b5c-1111-4222-8333-944455556666"
    )


# --- captures --------------------------------------------------------------------------------


def test_gs1_sensor_examples_are_captured_once_their_loggers_are_registered(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    examples = {p.name: p.read_bytes() for p in sorted(EXAMPLES.glob("*.jsonld"))}
    refused: dict[str, set[str]] = {}
    for name, raw in examples.items():
        code, body = _post(client, erp, raw)
        if code == 400:
            refused[name] = {d["message"] for d in body["details"]}
        else:
            assert code == 202, (name, body)
    # Time-stamped temperatures of GIAI-named loggers we do not know: refused, naming the logger.
    # Only temperatures become readings: the humidity, speed and light sensors of example 4 and
    # the custom measurements of example 7 do not need a registered logger.
    unknown = {"logger '4000001111' is not registered in this organization"}
    assert refused == {
        name: unknown
        for name in (
            "SensorDataExample1.jsonld",
            "SensorDataExample1b.jsonld",
            "SensorDataExample4.jsonld",
            "SensorDataExample5.jsonld",
            "SensorDataExample7.jsonld",
        )
    }
    assert _counts(db)["readings"] == 0
    registry.create_device(db, org=1, device=Device(id="4000001111"), actor="t")
    for name in sorted(refused):
        code, body = _post(client, erp, examples[name])
        assert code == 202, (name, body)
    stored = db.execute(
        "SELECT d.id, r.c, r.t FROM readings r JOIN devices d ON d.key = r.device_key ORDER BY d.id, r.t"
    ).fetchall()
    first = [(c, t) for d, c, t in stored if d == "4000001111"]
    # Example 1: 26.0, 26.1, 26.2 °C at 14:05, 14:35, 14:55 +01:00 (examples 1b and 5 repeat times).
    assert [round(c, 1) for c, _ in first[:3]] == [26.0, 26.1, 26.2]
    assert first[0][1] == datetime(2019, 4, 2, 13, 5, tzinfo=UTC)
    seqs = {r[0] for r in db.execute("SELECT seq FROM batches").fetchall()}
    assert all(s < CAPTURE_SEQ_BASE for s in seqs)


@pytest.mark.both_engines
def test_capture_makes_readings_the_api_shows_and_the_rules_alert_on(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection, db_engine: str
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    minutes = list(range(0, 240, 5))
    temps = [5.0 if m < 60 or m >= 150 else 12.0 for m in minutes]  # 90 minutes above 8 °C
    doc = _document(_sensor_event("D1", minutes, temps))
    code, body = _post(client, erp, doc)
    assert code == 202, body
    assert (body["readings"], body["stored"], body["duplicates"], body["refused"]) == (48, 48, 0, 0)
    assert body["devices"] == ["D1"] and body["repeated"] is False

    got = client.get(f"/api/v1/lots/{GTIN}/A1/readings", headers=erp).json()
    assert len(got["readings"]) == 48
    assert max(r["c"] for r in got["readings"]) == 12.0

    stats = drain(db)
    assert stats.alerts_opened >= 1
    alerts = client.get("/api/v1/alerts", headers=erp).json()
    assert any(a["kind"] == "single" and a["shipment"] == "S1" for a in alerts), alerts
    # Captured readings are not live contact: the logger's own sequence and last-seen stay empty.
    assert db.execute("SELECT last_seq, last_seen_at FROM devices WHERE id = 'D1'").fetchone() == (None, None)

    # The same bytes again: recognised by hash, nothing stored.
    before = _counts(db)
    code, again = _post(client, erp, doc)
    assert code == 200 and again["repeated"] is True and again["stored"] == 0
    assert again["capture_id"] == body["capture_id"]
    # The same events in another document: a new capture that applies no event and stores nothing.
    code, other = _post(client, erp, {**doc, "creationDate": "2026-11-03T00:00:00Z"})
    assert code == 202 and not other["repeated"]
    assert (other["new_events"], other["duplicate_events"], other["stored"]) == (0, 1, 0)
    after = _counts(db)
    assert after["readings"] == before["readings"] and after["epcis_events"] == before["epcis_events"]
    assert after["epcis_captures"] == before["epcis_captures"] + 1


def test_new_events_with_readings_already_stored_count_as_duplicates(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    code, first = _post(client, erp, _document(_sensor_event("D1", [0, 5, 10], [4.0, 4.5, 5.0])))
    assert code == 202 and first["stored"] == 3
    # Another event (a humidity field makes it differ) reporting two of the same times and one new.
    event = _sensor_event("D1", [5, 10, 15], [4.5, 5.0, 5.5])
    event["sensorElementList"][0]["sensorReport"].append(
        {"type": "RelativeHumidity", "value": 40, "uom": "P1"}
    )
    code, second = _post(client, erp, _document(event))
    assert code == 202, second
    assert (second["new_events"], second["readings"], second["stored"], second["duplicates"]) == (1, 3, 1, 2)
    assert _counts(db)["readings"] == 4


def test_shipping_and_receiving_move_the_shipment_and_put_lots_on_it(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    lots = [{"epcClass": "urn:epc:class:lgtin:9506000.013435.B7", "quantity": 40}]
    shipping = _movement("shipping", 30, epcs=[SSCC_URN], place=ORIGIN, shipment="S1", lots=lots)
    code, body = _post(client, erp, _document(shipping))
    assert code == 202, body
    assert body["movements"] == 1 and body["shipments"] == ["S1"]
    # The receiving side knows only the pallet, in Digital Link form.
    receiving = _movement("receiving", 600, epcs=[SSCC_LINK], place=DEST)
    code, body = _post(client, erp, _document(receiving))
    assert code == 202, body
    row = db.execute("SELECT departed_at, arrived_at FROM shipments WHERE id = 'S1'").fetchone()
    assert row == (
        datetime.fromtimestamp(T0 / 1000 + 1800, UTC),
        datetime.fromtimestamp(T0 / 1000 + 36000, UTC),
    )
    moves = db.execute("SELECT step, gln, ssccs FROM shipment_movements ORDER BY at").fetchall()
    assert moves == [("shipping", "4012345000054", [SSCC]), ("receiving", "4012345000061", [SSCC])]
    lots_on = db.execute("SELECT gtin, lot, quantity FROM shipment_lots ORDER BY lot").fetchall()
    assert ("09506000134352", "B7", 40) in lots_on and ("09506000134352", "A1", None) in lots_on
    leg = client.get("/api/v1/shipments/S1/movements", headers=erp).json()
    assert (leg["departed_at"], leg["arrived_at"], leg["ssccs"]) == (
        "2026-11-01T00:30:00Z",
        "2026-11-01T10:00:00Z",
        [SSCC],
    )
    assert [(m["step"], m["gln"]) for m in leg["movements"]] == [
        ("shipping", "4012345000054"),
        ("receiving", "4012345000061"),
    ]
    assert client.get("/api/v1/shipments/NOPE/movements", headers=erp).status_code == 404
    trail = {r[0] for r in db.execute("SELECT action FROM audit_trail WHERE entity = 'shipment'").fetchall()}
    assert {"link_units", "add_lot", "depart", "arrive"} <= trail


def test_a_faulty_document_is_refused_whole_with_every_problem_listed(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    good = _sensor_event("D1", [0, 5], [4.0, 4.1])
    bad_time = _sensor_event("D1", [10], [4.2])
    bad_time["sensorElementList"][0]["sensorMetadata"]["time"] = "2026-11-01T25:00:00Z"
    bad_step = _sensor_event("D1", [15], [4.3], bizStep="chilling")
    extension = _sensor_event("D1", [20], [4.4], colour="blue")
    unknown_sscc = _movement("receiving", 60, epcs=["urn:epc:id:sscc:0614141.0000000001"], place=DEST)
    unknown_logger = _sensor_event("NOPE", [25], [4.5])
    doc = _document(good, bad_time, bad_step, extension)
    del doc["@context"]
    before = _counts(db)
    code, body = _post(client, erp, doc)
    assert code == 400, body
    assert body["error"] == "BadRequest" and "nothing was stored" in body["message"]
    fields = {d["field"] for d in body["details"]}
    assert fields == {
        "(document)",
        "epcisBody.eventList[1].sensorElementList[0].sensorMetadata.time",
        "epcisBody.eventList[2].bizStep",
        "epcisBody.eventList[3].colour",
    }, body["details"]
    # Schema-valid, but naming master data that is not there: refused too, with both reasons.
    code, body = _post(client, erp, _document(good, unknown_sscc, unknown_logger))
    assert code == 400
    messages = [d["message"] for d in body["details"]]
    assert any("SSCC 006141410000000012 belongs to no shipment" in m for m in messages), messages
    assert "logger 'NOPE' is not registered in this organization" in messages
    # Not JSON, and JSON that is no document.
    assert _post(client, erp, b"{not json")[0] == 400
    assert _post(client, erp, [1, 2])[0] == 400
    long_id = _sensor_event("D1", [30], [4.6], eventID="urn:example:" + "x" * 3000)
    code, body = _post(client, erp, _document(long_id))
    assert code == 400 and body["details"][0]["field"] == "epcisBody.eventList[0].eventID"
    assert _counts(db) == before


def test_a_logger_of_another_organization_is_unknown_here(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    row = db.execute("INSERT INTO organizations (slug, name) VALUES ('acme', 'Acme') RETURNING id").fetchone()
    assert row is not None
    registry.create_device(db, org=int(row[0]), device=Device(id="THEIRS"), actor="t")
    code, body = _post(client, erp, _document(_sensor_event("THEIRS", [0], [4.0])))
    assert code == 400
    assert [d["message"] for d in body["details"]] == [
        "logger 'THEIRS' is not registered in this organization"
    ]
    assert _counts(db)["readings"] == 0


def test_captures_are_listed_and_kept_byte_for_byte(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    raw = json.dumps(_document(_sensor_event("D1", [0, 5], [4.0, 4.1])), indent=2).encode()
    code, body = _post(client, erp, raw)
    assert code == 202
    listed = client.get("/api/v1/epcis/captures", headers=erp).json()
    assert [c["capture_id"] for c in listed] == [body["capture_id"]]
    assert listed[0]["captured_by"] == "partner WMS" and listed[0]["stored"] == 2
    one = client.get(f"/api/v1/epcis/captures/{body['capture_id']}", headers=erp).json()
    assert [e["biz_step"] for e in one["applied_events"]] == ["sensor_reporting"]
    doc = client.get(f"/api/v1/epcis/captures/{body['capture_id']}/document", headers=erp)
    assert doc.content == raw and doc.headers["X-Content-SHA256"] == body["sha256"]
    assert client.get("/api/v1/epcis/captures/999", headers=erp).status_code == 404
    # The record is append-only.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute("DELETE FROM epcis_captures")


def test_an_out_of_range_reading_is_a_dead_letter_naming_the_capture(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    code, body = _post(client, erp, _document(_sensor_event("D1", [0, 5, 10], [4.0, 500.0, 4.2])))
    assert code == 202, body
    assert (body["readings"], body["stored"], body["refused"]) == (3, 2, 1)
    letters = db.execute("SELECT topic, device_id, reason FROM dead_letters").fetchall()
    assert [(t, d) for t, d, _ in letters] == [(f"epcis-captures/{body['capture_id']}", "D1")]


def test_two_documents_with_the_same_events_at_once_apply_them_once(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    add_leg(db, "S1", ["D1"], 0, None)
    event = _sensor_event("D1", list(range(0, 600, 5)), [4.0] * 120)
    docs = [_document(event, created=f"2026-11-0{n}T00:00:00Z") for n in (2, 3, 4)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda d: _post(client, erp, d), docs))
    assert [code for code, _ in answers] == [202, 202, 202]
    assert sorted(a["new_events"] for _, a in answers) == [0, 0, 1]
    assert sum(a["stored"] for _, a in answers) == 120
    assert _counts(db)["readings"] == 120 and _counts(db)["epcis_events"] == 1


def test_a_declared_body_over_the_capture_limit_is_refused_unread(
    client: TestClient, erp: dict[str, str]
) -> None:
    res = client.post(
        "/api/v1/epcis/capture", headers={**erp, "Content-Length": str(MAX_CAPTURE_BYTES + 1)}, content=b"{}"
    )
    assert res.status_code == 413 and res.json()["error"] == "PayloadTooLarge"


def test_the_services_role_captures_and_cannot_rewrite_a_capture(db_dsn: str, db: psycopg.Connection) -> None:
    """As the services run: connected as coldchain_app, a capture works end to end, and the kept
    documents and event keys cannot be changed, deleted or truncated."""
    add_leg(db, "S1", ["D1"], 0, None)
    token = auth.create_token(db, org=1, name="partner WMS", role=Role.ERP, actor="test")
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/ld+json"}
    db.execute("ALTER ROLE coldchain_app LOGIN")
    app_dsn = db_dsn.replace("postgres@", "coldchain_app@", 1)
    with (
        open_pool(app_dsn, max_size=2) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as client,
    ):
        shipping = _movement("shipping", 30, epcs=[SSCC_URN], place=ORIGIN, shipment="S1")
        code, body = _post(client, h, _document(shipping, _sensor_event("D1", [0, 5], [4.0, 4.1])))
        assert code == 202 and body["stored"] == 2 and body["movements"] == 1, body
    with psycopg.connect(app_dsn, autocommit=True) as app:
        assert app.execute("SELECT current_user").fetchone() == ("coldchain_app",)
        for statement in (
            "UPDATE epcis_captures SET captured_by = 'mallory'",
            "DELETE FROM epcis_captures",
            "TRUNCATE epcis_captures CASCADE",
            "UPDATE epcis_events SET biz_step = 'receiving'",
            "DELETE FROM epcis_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)


def test_serialised_items_put_their_lots_on_the_shipment_by_serial(
    client: TestClient, erp: dict[str, str], db: psycopg.Connection
) -> None:
    """SGTINs in a shipping event name items: each is found in a lot's serial list (a single
    serial or a range) and its lot goes on the shipment, counted; a serial of no lot refuses
    the document, and nothing of it is stored."""
    add_leg(db, "S1", ["D1"], 0, None)
    db.execute(
        "INSERT INTO lots (org_id, gtin, lot, serials) VALUES"
        " (1, '09506000134352', 'B8', ARRAY['S0001..S0400']), (1, '09506000134352', 'B9', ARRAY['X7'])"
    )
    items = [
        "urn:epc:id:sgtin:9506000.013435.S0007",
        "https://id.gs1.org/01/09506000134352/21/S0399",
        "urn:epc:id:sgtin:9506000.013435.X7",
    ]
    stray = _movement("shipping", 30, epcs=[*items, "urn:epc:id:sgtin:9506000.013435.S9999"],
                      place=ORIGIN, shipment="S1")
    before = _counts(db)
    code, body = _post(client, erp, _document(stray))
    assert code == 400, body
    (problem,) = body["details"]
    assert problem["field"] == "epcisBody.eventList[0].epcList[3]"
    assert "S9999" in problem["message"] and "no registered lot" in problem["message"]
    assert _counts(db) == before

    shipping = _movement("shipping", 30, epcs=items, place=ORIGIN, shipment="S1")
    code, body = _post(client, erp, _document(shipping))
    assert code == 202, body
    lots_on = db.execute(
        "SELECT lot, quantity FROM shipment_lots WHERE lot IN ('B8', 'B9') ORDER BY lot"
    ).fetchall()
    assert lots_on == [("B8", 2), ("B9", 1)]
