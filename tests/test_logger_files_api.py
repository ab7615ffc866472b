"""POST /api/v1/logger-files and `coldchain logger-file import` against a real PostgreSQL: readings
through the ingest writer, the second upload stores nothing, overlapping files merge, bad files get
a 422 naming the line and store nothing, the original comes back byte for byte."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.cli import main
from coldchain.settings import Settings
from storage import auth
from storage import logger_files as store
from storage.db import open_pool

DATA = Path(__file__).parent / "data" / "loggers"
FT2 = "FridgeTag_2__130400191544_202304201514.txt"
FT2L = "FridgeTag_2L__130500109088_202206081014.txt"
FT2L_CUT = "FridgeTag_2L__test.txt"
QTAG2 = "QTag_CLm_doc_LR__RCPJ00010_02_202211090128.txt"
GTIN = "09506000134352"


@pytest.fixture
def token(db: psycopg.Connection) -> str:
    return auth.create_token(db, org=1, name="depot clerk", role=Role.LOGISTICS, actor="test")


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=4) as pool:
        app = create_app(Settings(database_url=db_dsn), pool=pool)
        with TestClient(app) as c:
            yield c


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload(
    client: TestClient, token: str, name: str, raw: bytes | None = None, **form: str
) -> tuple[int, dict]:
    content = (DATA / name).read_bytes() if raw is None else raw
    res = client.post(
        "/api/v1/logger-files", headers=_h(token), files={"file": (name, content, "text/plain")}, data=form
    )
    return res.status_code, res.json()


def _counts(db: psycopg.Connection) -> tuple[int, int, int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM logger_files),"
        " (SELECT count(*) FROM devices), (SELECT count(*) FROM logger_file_days)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def test_upload_stores_readings_once_and_the_second_upload_stores_nothing(
    client: TestClient, token: str, db: psycopg.Connection
) -> None:
    code, body = _upload(client, token, QTAG2)
    assert code == 201, body
    assert body["format"] == "qtag-clm" and body["device"] == "RCPJ00010"
    assert (body["readings"], body["stored"], body["duplicates"], body["repeated"]) == (124, 124, 0, False)
    assert body["device_report"]["mkt_c"] == 10.5
    assert 10.5 <= body["platform_report"]["mkt_c"] < 10.6
    assert body["discrepancies"] == []
    assert {a["alarm"] for a in body["device_report"]["alarms"]} == {1, 2, 4, 5}
    assert body["platform_report"]["calibration"]["first_reading"] == {
        "date": "2022-11-08", "status": "never", "certificate": None, "due_on": None
    }
    # The readings went through the ingest writer: one file batch (seq < 0), late, 2022 data kept.
    batch = db.execute("SELECT seq, readings, late FROM batches").fetchall()
    assert batch == [(-body["id"], 124, True)]
    assert db.execute("SELECT last_seq, last_seen_at FROM devices").fetchone() == (None, None)
    assert _counts(db)[:3] == (124, 1, 1)

    code, again = _upload(client, token, QTAG2)
    assert code == 200 and again["repeated"] is True
    assert (again["stored"], again["duplicates"], again["id"]) == (0, 124, body["id"])
    assert _counts(db)[:3] == (124, 1, 1)


def test_overlapping_files_merge(client: TestClient, token: str, db: psycopg.Connection) -> None:
    code, cut = _upload(client, token, FT2L_CUT)
    assert code == 201 and cut["stored"] == 53
    code, full = _upload(client, token, FT2L)
    assert code == 201, full
    assert (full["readings"], full["stored"], full["duplicates"]) == (10_653, 10_653 - 53, 53)
    assert _counts(db)[0] == 10_653
    distinct = db.execute("SELECT count(DISTINCT t) FROM readings").fetchone()
    assert distinct == (10_653,)
    assert full["discrepancies"] == []
    assert len(full["device_report"]["days"]) == 38
    assert _counts(db)[3] == 38 + 38


def test_summary_only_file_keeps_daily_records_and_no_readings(
    client: TestClient, token: str, db: psycopg.Connection
) -> None:
    code, body = _upload(client, token, FT2)
    assert code == 201, body
    assert body["summary_only"] is True and body["readings"] == 0 and body["stored"] == 0
    assert [d["date"] for d in body["device_report"]["days"]] == [
        "2023-04-17", "2023-04-18", "2023-04-19", "2023-04-20"
    ]
    rows = db.execute("SELECT day, min_c, max_c, mean_c FROM logger_file_days ORDER BY day").fetchall()
    d, lo, hi, mean = rows[0]
    assert (str(d), round(lo, 1), round(hi, 1), round(mean, 1)) == ("2023-04-17", 2.3, 20.8, 4.4)
    assert _counts(db)[0] == 0


@pytest.mark.parametrize(
    ("mutate", "line"),
    [
        (lambda b: b"", 1),
        (lambda b: b[: b.index(b"Cert:")], 195),  # its last line
        (lambda b: b.replace(b"\t2022-11-08 12:49\t0.9\tx", b"\t2022-11-08 12:49\t0,9x\tx"), 120),
        (lambda b: b"%PDF-1.3 not a text export", 1),
    ],
)
def test_bad_files_get_422_naming_the_line_and_store_nothing(
    client: TestClient, token: str, db: psycopg.Connection, mutate: object, line: int
) -> None:
    raw = mutate((DATA / QTAG2).read_bytes())  # type: ignore[operator]
    code, body = _upload(client, token, QTAG2, raw=raw)
    assert code == 422, body
    assert body["error"] == "LoggerFileError" and body["message"].startswith(f"line {line}: ")
    assert _counts(db) == (0, 0, 0, 0)


def test_csv_with_a_saved_mapping_and_a_bad_row(
    client: TestClient, token: str, db: psycopg.Connection
) -> None:
    mapping = {
        "time_column": "Zeit", "value_column": "Temperatur", "time_format": "%d.%m.%Y %H:%M",
        "timezone": "Europe/Berlin", "delimiter": ";", "decimal": ",", "encoding": "cp1252",
    }
    res = client.put("/api/v1/logger-files/mappings/depot-csv", json=mapping, headers=_h(token))
    assert res.status_code == 200, res.text
    good = (
        "Zeit;Temperatur;Ort\n01.07.2024 12:00;5,5;Kühlraum\n01.07.2024 12:05;--.-;\n"
        "01.07.2024 12:10;6,0;\n"
    )
    code, body = _upload(client, token, "export.csv", raw=good.encode("cp1252"),
                         mapping_name="depot-csv", device="DEPOT-7")
    assert code == 201, body
    assert (body["format"], body["device"], body["stored"], body["missing"]) == ("csv", "DEPOT-7", 2, 1)
    bad = good.replace("01.07.2024 12:10;6,0;", "01.07.2024 12:10;sechs;")
    code, body = _upload(client, token, "export2.csv", raw=bad.encode("cp1252"),
                         mapping_name="depot-csv", device="DEPOT-7")
    assert code == 422 and body["message"].startswith("line 4: ")
    assert _counts(db)[:2] == (2, 1)
    code, body = _upload(client, token, "x.csv", raw=good.encode(), mapping_name="nope")
    assert code == 404
    # A reading outside the physical range is refused by the writer's checks, as over MQTT.
    hot = good.replace("01.07.2024 12:10;6,0;", "01.07.2024 12:15;150,0;")
    code, body = _upload(client, token, "export3.csv", raw=hot.encode("cp1252"),
                         mapping_name="depot-csv", device="DEPOT-7")
    assert code == 201, body
    assert (body["stored"], body["duplicates"], body["refused"]) == (0, 1, 1)
    letter = db.execute("SELECT topic, reason FROM dead_letters").fetchone()
    assert letter == (f"logger-files/{body['id']}", "out_of_range")


def test_original_comes_back_byte_for_byte_with_its_hash(
    client: TestClient, token: str, db: psycopg.Connection
) -> None:
    raw = (DATA / QTAG2).read_bytes()
    _, body = _upload(client, token, QTAG2)
    res = client.get(f"/api/v1/logger-files/{body['id']}/original", headers=_h(token))
    assert res.status_code == 200
    assert res.content == raw
    assert res.headers["X-Content-SHA256"] == hashlib.sha256(raw).hexdigest() == body["sha256"]
    listed = client.get("/api/v1/logger-files?device=RCPJ00010", headers=_h(token)).json()
    assert [f["id"] for f in listed] == [body["id"]]
    key = store.device_key_of(db, org=1, device_id="RCPJ00010")
    assert key is not None
    trip = store.originals_for_device(db, org=1, device_key=key, from_ms=1667900000000, to_ms=1667910000000)
    assert [(f.id, f.content) for f in trip] == [(body["id"], raw)]
    assert store.originals_for_device(db, org=1, device_key=key, from_ms=0, to_ms=1_600_000_000_000) == []


def test_file_for_a_shipment_links_readings_and_is_judged_by_its_profile(
    client: TestClient, token: str, db: psycopg.Connection
) -> None:
    shipment = {
        "id": "SO-2022-11", "origin": "Plant", "destination": "Depot", "profile": "2-8C",
        "lots": [{"gtin": GTIN, "lot": "L1", "expiry": "2027-05-31", "quantity": 10}], "devices": [],
    }
    assert client.post("/api/v1/shipments", json=shipment, headers=_h(token)).status_code == 201
    code, body = _upload(client, token, QTAG2, shipment="SO-2022-11")
    assert code == 201, body
    assert body["shipment"] == "SO-2022-11"
    linked = db.execute("SELECT count(*) FROM readings WHERE shipment_key IS NOT NULL").fetchone()
    assert linked == (124,)
    unders = {x["under"] for x in body["platform_report"]["excursions"]}
    assert unders == {"device_config", "shipment_profile:2-8C"}
    queued = db.execute("SELECT count(*), bool_and(late) FROM rule_queue").fetchone()
    assert queued == (1, True)


def test_viewer_may_not_upload(client: TestClient, db: psycopg.Connection) -> None:
    viewer = auth.create_token(db, org=1, name="viewer", role=Role.VIEWER, actor="test")
    code, _ = _upload(client, viewer, QTAG2)
    assert code == 403


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The CLI configures the root logger on the captured stderr; put the handlers back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_cli_imports_a_file(db_dsn: str, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    assert main(["logger-file", "import", str(DATA / QTAG2)]) == 0
    out = capsys.readouterr().out
    assert "qtag-clm RCPJ00010: 124 readings, 124 stored" in out
    assert main(["logger-file", "import", str(DATA / QTAG2), "--json"]) == 0
    body = orjson.loads(capsys.readouterr().out)
    assert body["repeated"] is True and body["stored"] == 0
    assert main(["logger-file", "import", str(DATA / "QTag_CLm_doc_LR__RCPJ00010_02_202211090128.pdf")]) == 2
    assert "line 1:" in capsys.readouterr().err


def test_the_same_file_uploaded_twice_at_once_is_kept_once(db_dsn: str, db: psycopg.Connection) -> None:
    import threading

    from api.field_data import import_and_compare

    raw = (DATA / QTAG2).read_bytes()
    results: list[dict] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                results.append(import_and_compare(
                    conn, raw, org=1, organization="default", actor="clerk",
                    settings=Settings(database_url=db_dsn),
                ))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(r["stored"] for r in results) == [0, 124]
    assert _counts(db)[:3] == (124, 1, 1)


def test_a_logger_that_rode_with_another_shipment_is_a_conflict(
    client: TestClient, token: str, db: psycopg.Connection
) -> None:
    def shipment(ship: str, devices: list[dict[str, object]]) -> None:
        body = {
            "id": ship, "origin": "Plant", "destination": "Depot", "profile": "2-8C",
            "lots": [{"gtin": GTIN, "lot": "L1", "expiry": "2027-05-31", "quantity": 10}],
            "devices": devices,
        }
        res = client.post("/api/v1/shipments", json=body, headers=_h(token))
        assert res.status_code == 201, res.text

    assert client.post("/api/v1/devices", json={"id": "RCPJ00010"}, headers=_h(token)).status_code == 201
    shipment("SO-A", [{"id": "RCPJ00010", "from": "2022-11-08T00:00:00Z", "to": "2022-11-10T00:00:00Z"}])
    shipment("SO-B", [])
    code, body = _upload(client, token, QTAG2, shipment="SO-B")
    assert code == 409 and "SO-A" in body["message"]
    assert _counts(db)[:2] == (0, 0)
    code, body = _upload(client, token, QTAG2, shipment="SO-A")
    assert code == 201 and body["stored"] == 124
    assert db.execute("SELECT count(*) FROM device_assignments").fetchone() == (1,)


@pytest.mark.usefixtures("root_logging")
def test_cli_imports_into_the_installation_under_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without DATABASE_URL the import finds the private cluster under --data-dir, as every
    command does: started for the command (created and migrated), stopped after it."""
    from embedded.installation import Installation

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MQTT_URL", raising=False)
    data = tmp_path / "data"
    assert main(["logger-file", "import", "--data-dir", str(data), str(DATA / QTAG2)]) == 0
    out, err = capsys.readouterr()
    assert "qtag-clm RCPJ00010: 124 readings, 124 stored" in out and "starting PostgreSQL" in err
    assert Installation(data).running_postgres_port() is None  # stopped again after the command
    assert main(["logger-file", "import", "--data-dir", str(data), str(DATA / QTAG2)]) == 0
    assert "same file as before" in capsys.readouterr().out  # the same database the second time
