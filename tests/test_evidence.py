"""Evidence a QA reviewer can sign: a lot on two legs with two loggers and one excursion, in every
format, with figures equal to the rules', EPCIS valid against GS1's schema with formats checked,
and bundles and PDFs whose seals break on any changed byte."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from api.app import create_app
from coldchain.access import Role
from coldchain.settings import Settings
from evidence import bundle, model, signing
from evidence.epcis import epcis_document
from evidence.epcis_schema import document_problems
from evidence.tabular import csv_chunks, json_chunks
from rules.lot_figures import Leg, LoggerSeries, lot_figures
from rules.runner import drain
from storage import auth, profiles
from storage import evidence as store
from storage.db import open_pool
from tests.support.identity import bearer, make_user, signature
from tests.support.lots import GTIN, MIN, T0, add_leg, write_readings

DATA = Path(__file__).parent / "data" / "epcis"
SCHEMA = Path(__file__).parent.parent / "evidence" / "standards" / "EPCIS-JSON-Schema.json"


def _profile_leg_readings() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Leg 1: L1 steady, L2 with a 60-minute warm spell to 10 °C; leg 2: L3 steady and cool."""
    n = 300
    warm = np.full(n, 5.0)
    warm[100:160] = 10.0
    return {
        "L1": (np.arange(n), np.full(n, 4.5) + np.sin(np.arange(n) / 20)),
        "L2": (np.arange(n), warm),
        "L3": (600 + np.arange(n), np.full(n, 3.5)),
    }


@pytest.fixture
def lot(db: psycopg.Connection) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    add_leg(db, "LEG-1", ["L1", "L2"], 0, 600)
    add_leg(db, "LEG-2", ["L3"], 600, 1200)
    series = _profile_leg_readings()
    for device, (minutes, temps) in series.items():
        write_readings(db, device, minutes, temps, queue=True)
    drain(db)
    return series


@pytest.fixture
def key(tmp_path: Path) -> signing.SigningKey:
    return signing.signing_key(tmp_path / "data")


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "rfc3339-validator must be installed to check date-times"
    return jsonschema.Draft7Validator(schema, format_checker=checker)


def test_gs1_sensor_examples_validate_with_formats_checked() -> None:
    validator = _validator()
    examples = sorted(DATA.glob("*.jsonld"))
    assert len(examples) == 18
    for path in examples:
        errors = list(validator.iter_errors(json.loads(path.read_text())))
        assert errors == [], f"{path.name}: {errors[0].message}"
    # the check is live: a bad date-time is refused
    broken = json.loads((DATA / "SensorDataExample2.jsonld").read_text())
    broken["creationDate"] = "2019-04-02 15:00"
    assert any(e.validator == "format" for e in validator.iter_errors(broken))


def test_lot_evidence_every_format_agrees_with_the_rules(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], key: signing.SigningKey
) -> None:
    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    assert [leg.leg.shipment_id for leg in ev.legs] == ["LEG-1", "LEG-2"]
    assert ev.readings == 900

    # the figures are the rules' own: the same function the lot page calls, on the same readings
    legs = [
        Leg("LEG-1", profiles.resolve(db, org=1, profile_id="2-8C"),
            tuple(LoggerSeries(d, T0 + lot[d][0] * MIN, lot[d][1]) for d in ("L1", "L2"))),
        Leg("LEG-2", profiles.resolve(db, org=1, profile_id="2-8C"),
            (LoggerSeries("L3", T0 + lot["L3"][0] * MIN, lot["L3"][1]),)),
    ]
    expected = lot_figures(legs, stability_budget_s=72 * 3600)
    assert ev.figures["mkt_c"] == expected.mkt_c
    assert ev.figures["outside_labelled_range_s"] == 60 * 60 == expected.outside_labelled_range_s
    assert ev.figures["stability_budget_remaining_s"] == 71 * 3600
    assert ev.figures["worst_logger_per_shipment"] == {"LEG-1": "L2", "LEG-2": "L3"}

    doc = json.loads(b"".join(json_chunks(ev)))
    assert doc["subject"]["digital_link"] == f"https://id.gs1.org/01/{GTIN}/10/A1"
    leg1 = doc["legs"][0]
    l2 = next(d for d in leg1["devices"] if d["id"] == "L2")
    assert l2["stats"]["max_c"] == 10.0 and l2["stats"]["time_beyond_s"]["H1"] == 3600.0
    assert len(l2["readings"]) == 300
    assert l2["readings"][100] == {"t": "2026-11-01T01:40:00.000Z", "device_t": "2026-11-01T01:40:00.000Z",
                                   "c": 10.0}
    assert leg1["stats"]["worst_logger"] == "L2"
    excursions = [x for x in leg1["excursions"] if x["kind"] == "single"]
    assert len(excursions) == 1 and excursions[0]["device"] == "L2" and excursions[0]["limit"] == "H1"
    assert excursions[0]["lifecycle"][0]["action"] == "open"
    assert excursions[0]["signatures"] == []
    assert doc["profiles"]["2-8C v1"]["labelled_range"] == {"high_limit": "H1", "low_limit": "L1"}

    rows = list(csv.DictReader(io.StringIO(b"".join(csv_chunks(ev)).decode("utf-8"))))
    assert len(rows) == 900
    warm = [r for r in rows if r["device"] == "L2" and r["time_utc"] == "2026-11-01T01:40:00.000Z"]
    assert warm == [{"shipment": "LEG-1", "device": "L2", "time_utc": "2026-11-01T01:40:00.000Z",
                     "device_time": "2026-11-01T01:40:00.000Z", "temperature_c": "10.0",
                     "humidity_pct": "", "door_open": "0", "late": "0", "clock_corrected": "0"}]
    assert [float(r["temperature_c"]) for r in rows if r["device"] == "L3"] == [3.5] * 300

    epcis = epcis_document(ev)
    errors = list(_validator().iter_errors(epcis))
    # The capture's validator (GS1's schema, context, CBV terms, namespaced extensions) accepts it.
    assert document_problems(epcis) == []
    assert errors == [], errors[0].message
    events = epcis["epcisBody"]["eventList"]
    assert len(events) == 3  # one per leg and logger
    assert {e["bizStep"] for e in events} == {"sensor_reporting"}
    assert events[0]["quantityList"][0]["epcClass"] == f"https://id.gs1.org/01/{GTIN}/10/A1"
    alarms = [r for e in events for el in e["sensorElementList"] for r in el["sensorReport"]
              if r.get("exception") == "ALARM_CONDITION"]
    assert len(alarms) == 1 and alarms[0]["maxValue"] == 10.0
    hourly = [el for el in events[1]["sensorElementList"] if "exception" not in el["sensorReport"][0]]
    assert max(el["sensorReport"][0]["maxValue"] for el in hourly) == 10.0


def test_bundle_verifies_and_fails_on_any_changed_byte(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], key: signing.SigningKey,
    tmp_path: Path,
) -> None:
    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    path = tmp_path / "lot.zip"
    with path.open("w+b") as out:
        manifest = bundle.write_bundle(ev, out, key=key, verify_url="http://qa.example/verify")
    verdict = bundle.verify_path(path, key.public)
    assert verdict.authentic, verdict.reason
    assert verdict.subject is not None and verdict.subject["lot"] == "A1"
    assert bundle.verify_path(path, key.public, deep=True).authentic
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"evidence.json", "readings.csv", "epcis.jsonld", "report.pdf",
                                      "public-key.pem", "manifest.json", "manifest.sig"}
        record = manifest["files"]["evidence.json"]["sha256"]
        assert manifest["record_sha256"] == record == bundle.record_sha256(ev)
    content = path.read_bytes()
    # every byte position of the small structures, and a spread of positions through the data
    positions = sorted(set(range(0, 64)) | set(range(len(content) - 400, len(content)))
                       | set(np.linspace(0, len(content) - 1, 300).astype(int).tolist()))
    for pos in positions:
        changed = bytearray(content)
        changed[pos] ^= 0x01
        result = bundle.verify_bytes(bytes(changed), key.public)
        assert not result.authentic, f"a change at byte {pos} went unnoticed"
        assert result.reason
    other = signing.signing_key(tmp_path / "other")
    assert not bundle.verify_path(path, other.public).authentic


def test_pdf_report_holds_the_lot_the_figures_and_the_signature_block(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], key: signing.SigningKey,
    tmp_path: Path,
) -> None:
    from evidence.report import pdf_bytes

    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    record = bundle.record_sha256(ev)
    pdf = pdf_bytes(ev, record_sha256=record, verify_url="http://qa.example/api/v1/evidence/verify", key=key)
    verdict = bundle.verify_bytes(pdf, key.public)
    assert verdict.authentic and verdict.kind == "pdf" and verdict.record_sha256 == record
    changed = bytearray(pdf)
    changed[len(pdf) // 2] ^= 0x20
    assert not bundle.verify_bytes(bytes(changed), key.public).authentic

    reader = PdfReader(io.BytesIO(pdf))
    assert reader.metadata is not None and record in (reader.metadata.subject or "")
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "A1" in text and GTIN in text
    assert f"{ev.figures['mkt_c']:.2f}" in text
    assert "1:00 h" in text  # the hour outside the labelled range
    assert "Signatures" in text and "Reviewed by (QA)" in text
    assert f"Page 1 of {len(reader.pages)}" in text
    assert record in text.replace("\n", "")
    fonts = {str(f) for page in reader.pages for f in page["/Resources"]["/Font"].values()}
    assert fonts
    for page in reader.pages:
        for font in page["/Resources"]["/Font"].values():
            descriptor = font.get_object()["/FontDescriptor"].get_object()
            assert "/FontFile2" in descriptor, "fonts must be embedded"



@pytest.mark.skipif(shutil.which("pdftoppm") is None,
                    reason="pdftoppm (poppler-utils) is not installed: the PDF cannot be rendered to PNG")
def test_pdf_report_renders_to_png(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], key: signing.SigningKey,
    tmp_path: Path,
) -> None:
    from evidence.report import pdf_bytes

    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    record = bundle.record_sha256(ev)
    pdf = pdf_bytes(ev, record_sha256=record, verify_url="http://qa.example/verify", key=key)
    (tmp_path / "report.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(tmp_path / "report.pdf"),
                    str(tmp_path / "page")], check=True, timeout=60)
    png = next(tmp_path.glob("page*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


@pytest.fixture
def api(db_dsn: str, db: psycopg.Connection, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    bearer = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="qa", role=Role.QA, actor="t")}
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data")
    with open_pool(db_dsn, max_size=2) as pool, TestClient(create_app(settings, pool=pool)) as client:
        yield client, bearer


def _check_documented(client: TestClient, doc: object, name: str = "EvidenceRecord") -> None:
    """`doc` is valid against the schema the OpenAPI document gives the answer (as a client reads it)."""
    components = client.get("/openapi.json").json()["components"]
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    errors = list(jsonschema.Draft202012Validator(schema, format_checker=checker).iter_errors(doc))
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_http_evidence_in_every_format_and_verification(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]],
    api: tuple[TestClient, dict[str, str]], tmp_path: Path,
) -> None:
    client, h = api
    got = client.get(f"/api/v1/lots/{GTIN}/A1/evidence", headers=h)
    assert got.status_code == 200, got.text
    assert got.json()["figures"]["outside_labelled_range_s"] == 3600
    _check_documented(client, got.json())
    for fmt, kind in (("csv", "text/csv"), ("epcis", "application/ld+json"), ("pdf", "application/pdf"),
                      ("bundle", "application/zip")):
        got = client.get(f"/api/v1/lots/{GTIN}/A1/evidence?format={fmt}", headers=h)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith(kind)
        assert "attachment" in got.headers["content-disposition"]
        if fmt == "pdf":
            pdf = client.post("/api/v1/evidence/verify", headers=h, files={"file": ("lot.pdf", got.content)})
            assert pdf.status_code == 200 and pdf.json()["authentic"] is True and pdf.json()["file"] == "pdf"
            assert "A1" in pdf.json()["subject"]["title"]
    bundle_bytes = got.content
    ship = client.get("/api/v1/shipments/LEG-1/evidence", headers=h)
    assert ship.status_code == 200 and [x["id"] for x in ship.json()["legs"][0]["devices"]] == ["L1", "L2"]
    alert_id = ship.json()["legs"][0]["excursions"][0]["id"]
    exc = client.get(f"/api/v1/alerts/{alert_id}/evidence", headers=h)
    assert exc.status_code == 200
    listed = {d["id"]: d["readings_listed"] for d in exc.json()["legs"][0]["devices"]}
    assert 0 < listed["L2"] < 300  # the window around the excursion
    _check_documented(client, ship.json())
    _check_documented(client, exc.json())
    assert client.get(f"/api/v1/lots/{GTIN}/A1/evidence?format=xml", headers=h).status_code == 422
    assert client.get("/api/v1/shipments/NOPE/evidence", headers=h).status_code == 404

    pem = client.get("/api/v1/evidence/public-key", headers=h)
    assert pem.status_code == 200 and pem.json()["algorithm"] == "Ed25519"
    _check_documented(client, pem.json(), "PublicKeyOut")
    ok = client.post("/api/v1/evidence/verify", headers=h, files={"file": ("lot.zip", bundle_bytes)})
    assert ok.status_code == 200 and ok.json()["authentic"] is True
    assert ok.json()["subject"]["lot"] == "A1"
    _check_documented(client, ok.json(), "VerifyResult")
    changed = bytearray(bundle_bytes)
    changed[len(changed) // 3] ^= 0x04
    bad = client.post("/api/v1/evidence/verify", headers=h, files={"file": ("lot.zip", bytes(changed))})
    assert bad.status_code == 200 and bad.json()["authentic"] is False and bad.json()["reason"]
    junk = client.post("/api/v1/evidence/verify", headers=h, files={"file": ("x.txt", b"hello")})
    assert junk.status_code == 200 and junk.json()["authentic"] is False


def test_evidence_store_reads_both_clocks(db: psycopg.Connection) -> None:
    add_leg(db, "LEG-9", ["C1"], 0, 600)
    write_readings(db, "C1", np.arange(3), np.array([4.0, 5.0, 6.0]))
    key = store.shipment_key(db, org=1, shipment_id="LEG-9")
    dev = db.execute("SELECT key FROM devices WHERE id = 'C1'").fetchone()
    assert dev is not None
    db.execute(
        "INSERT INTO batches (device_key, seq, org_id, received_at, sent_at, readings, clock_offset_ms)"
        " VALUES (%s, 0, 1, now(), now(), 3, 1500)",
        (dev[0],),
    )
    s = store.series(db, shipment_key=key, device_key=dev[0])
    assert s.t_ms.tolist() == [T0, T0 + MIN, T0 + 2 * MIN]
    assert (s.t_ms - s.device_t_ms).tolist() == [1500, 1500, 1500]
    assert s.c.tolist() == [4.0, 5.0, 6.0] and np.isnan(s.rh).all()


def test_command_line_verifies_offline_and_prints_the_public_key(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from coldchain.cli import main

    data = tmp_path / "data"
    assert main(["evidence", "public-key", "--data-dir", str(data)]) == 0
    pem = capsys.readouterr().out
    key = signing.signing_key(data)
    assert signing.public_pem(key.public) in pem
    assert (data / signing.KEY_FILE).stat().st_mode & 0o777 == 0o600

    ev = model.shipment_evidence(db, org=1, shipment_id="LEG-1")
    path = tmp_path / "leg1.zip"
    with path.open("w+b") as out:
        bundle.write_bundle(ev, out, key=key, verify_url="http://qa.example/verify")
    assert main(["evidence", "verify", str(path), "--data-dir", str(data)]) == 0
    assert "authentic bundle" in capsys.readouterr().out
    (tmp_path / "key.pem").write_text(signing.public_pem(key.public))
    assert main(["evidence", "verify", str(path), "--public-key", str(tmp_path / "key.pem")]) == 0
    capsys.readouterr()

    changed = bytearray(path.read_bytes())
    changed[len(changed) // 2] ^= 0x80
    path.write_bytes(bytes(changed))
    assert main(["evidence", "verify", str(path), "--data-dir", str(data)]) == 1
    assert "NOT authentic" in capsys.readouterr().err
    assert main(["evidence", "verify", str(path), "--data-dir", str(tmp_path / "empty")]) == 2


def test_bundles_are_recorded_when_an_excursion_opens_and_closes_and_a_shipment_completes(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], key: signing.SigningKey,
    tmp_path: Path,
) -> None:
    from coldchain.domain import Disposition
    from evidence.attach import record_due
    from storage import alerts

    data = tmp_path / "data"
    first = record_due(db, data_dir=data, key=key, verify_url="http://qa.example/verify")
    kinds = sorted((r.subject_kind, r.stage, r.subject) for r in first)
    excursion = [r for r in first if r.subject_kind == "excursion"]
    assert len(excursion) == 1 and excursion[0].stage == "preliminary"
    assert ("shipment", "completed", "LEG-1") in kinds and ("shipment", "completed", "LEG-2") in kinds
    for row in first:
        path = data / row.file_name
        assert path.name == f"{row.bundle_sha256}.zip" and bundle.file_sha256(path) == row.bundle_sha256
        assert bundle.verify_path(path, key.public).authentic
    assert record_due(db, data_dir=data, key=key, verify_url="http://qa.example/verify") == []

    alert_id = excursion[0].alert_id
    assert alert_id is not None
    # the rules resolved it when the temperature came back; QA closes it with a disposition
    alerts.transition(db, org=1, alert_id=alert_id, action="close", actor="qa", comment="door left ajar",
                      disposition=Disposition.RELEASE)
    final = record_due(db, data_dir=data, key=key, verify_url="http://qa.example/verify")
    assert [(r.subject_kind, r.stage, r.alert_id) for r in final] == [("excursion", "final", alert_id)]
    with zipfile.ZipFile(data / final[0].file_name) as zf:
        doc = json.loads(zf.read("evidence.json"))
    life = doc["legs"][0]["excursions"][0]["lifecycle"]
    assert [e["action"] for e in life] == ["open", "resolve", "close"]
    assert life[-1]["actor"] == "qa" and life[-1]["comment"] == "door left ajar"
    assert doc["legs"][0]["excursions"][0]["disposition"] == "release"
    rows = store.records(db, org=1, alert_id=alert_id)
    assert [r.stage for r in rows] == ["preliminary", "final"]
    assert rows[0].record_sha256 != rows[1].record_sha256


def test_a_lot_without_readings_yet_has_every_format(
    db: psycopg.Connection, key: signing.SigningKey, tmp_path: Path
) -> None:
    add_leg(db, "LEG-0", ["Q1"], 0, None)
    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    assert ev.readings == 0 and ev.figures["mkt_c"] is None
    doc = json.loads(b"".join(json_chunks(ev)))
    assert doc["legs"][0]["devices"][0]["readings"] == [] and doc["legs"][0]["stats"] is None
    assert b"".join(csv_chunks(ev)).count(b"\r\n") == 1  # the header only
    assert list(_validator().iter_errors(epcis_document(ev))) == []
    path = tmp_path / "empty.zip"
    with path.open("w+b") as out:
        bundle.write_bundle(ev, out, key=key, verify_url="http://qa.example/verify")
    assert bundle.verify_path(path, key.public, deep=True).authentic


def test_http_freeze_thaw_profiles_and_large_uploads(
    db_dsn: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    token = auth.create_token(db, org=1, name="adm", role=Role.ADMIN, actor="t")
    admin = {"Authorization": "Bearer " + token}
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data", http_max_body_bytes=1024)
    with open_pool(db_dsn, max_size=2) as pool, TestClient(create_app(settings, pool=pool)) as client:
        body = {
            "id": "vaccine", "name": "Vaccine", "limits": [
                {"id": "H", "side": "high", "threshold_c": 8.0, "single_event_delay_s": 0}],
            "freeze_thaw": {"freeze_below_c": 0.0, "thaw_above_c": 2.0, "min_frozen_s": 600},
        }
        # alarm limits are QA's: one QA person drafts, another approves with a signature
        make_user(db, "author@x.org", ["qa"])
        make_user(db, "second@x.org", ["qa"])
        author, second = bearer(client, "author@x.org"), bearer(client, "second@x.org")
        made = client.post("/api/v1/profiles", headers=author, json=body)
        assert made.status_code == 201, made.text
        assert made.json()["freeze_thaw"] == {
            "freeze_below_c": 0.0, "thaw_above_c": 2.0, "min_frozen_s": 600, "min_thawed_s": 3600}
        approved = client.post(
            "/api/v1/profiles/vaccine/versions/1/approve", headers=second,
            json={"comment": "ok", "signature": signature("approval")},
        )
        assert approved.status_code == 200, approved.text
        assert profiles.resolve(db, org=1, profile_id="vaccine").freeze_thaw is not None
        upside_down = {**body, "freeze_thaw": {"freeze_below_c": 3.0, "thaw_above_c": 2.0}}
        refused = client.post("/api/v1/profiles", headers=author, json=upside_down)
        assert refused.status_code == 422 and "thaw_above_c" in refused.json()["field"]

        # the verify upload may pass the general body limit (1 KiB here), up to its own
        big = client.post("/api/v1/evidence/verify", headers=admin, files={"file": ("x.bin", b"x" * 4096)})
        assert big.status_code == 200 and big.json()["authentic"] is False
        assert client.post("/api/v1/profiles", headers=author,
                           json={**body, "description": "d" * 2048}).status_code == 413
        extra = client.post("/api/v1/evidence/verify", headers=admin,
                            files={"file": ("x.bin", b"x")}, data={"note": "1"})
        assert extra.status_code == 422 and extra.json()["field"] == "note"


def test_a_lifecycle_longer_than_a_page_splits_across_pages_in_the_pdf(
    db: psycopg.Connection, lot: dict[str, tuple[np.ndarray, np.ndarray]], key: signing.SigningKey,
) -> None:
    """An alarm whose history outgrows a page (many steps, long comments) still prints: its row
    continues on the next page instead of failing the report."""
    from evidence.report import pdf_bytes

    (alert_id,) = db.execute("SELECT id FROM alerts ORDER BY id LIMIT 1").fetchone() or (None,)
    assert alert_id is not None
    for i in range(60):
        db.execute(
            "INSERT INTO alert_events (alert_id, actor, action, comment) VALUES (%s, 'ops', 'assign', %s)",
            (alert_id, f"note {i}: " + "the pallet was checked again at the cross-dock " * 6),
        )
    ev = model.lot_evidence(db, org=1, gtin=GTIN, lot="A1")
    pdf = pdf_bytes(ev, record_sha256=bundle.record_sha256(ev), verify_url="http://qa.example/v", key=key)
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "note 0:" in text and "note 59:" in text
