"""Bulk master-data import against a real PostgreSQL: checks, all or nothing, idempotent re-imports."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.access import Role
from coldchain.cli import main
from coldchain.domain import Device
from coldchain.gs1 import gtin_check_digit
from coldchain.settings import Settings
from erp.cli import ProgressBar
from erp.imports import Kind, run_import
from storage import audit, auth, registry
from storage.db import open_pool

GTIN = "09506000134352"
GTIN2 = "04006381333931"


def gtin(n: int) -> str:
    body = f"0950600{n:06d}"
    return body + str(gtin_check_digit(body))


def count(db: psycopg.Connection, table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


PRODUCTS_CSV = (
    "\ufeffGTIN;Name;Range Min C;Range Max C;Default Profile;Stability Budget H;Activation Energy kJ mol\n"
    f"{GTIN};Insulin pens;2;8;2-8C;72;83,144\n"
    f"{GTIN2};Vaccine;2;8;;;\n"
).replace("Activation Energy kJ mol", "activation_energy_kj_mol")


def import_products(db: psycopg.Connection) -> None:
    report = run_import(db, org=1, kind="products", data=PRODUCTS_CSV.encode(), actor="test")
    assert report.committed, report.errors


def test_products_from_a_semicolon_csv_with_a_bom(db: psycopg.Connection) -> None:
    report = run_import(db, org=1, kind=Kind.PRODUCTS, data=PRODUCTS_CSV.encode(), actor="test")
    assert (report.committed, report.rows, report.inserted, report.error_count) == (True, 2, 2, 0)
    assert report.changes == {
        "products": {"inserted": 2, "updated": 0},
        "product_profiles": {"inserted": 1, "updated": 0},
    }
    row = db.execute(
        "SELECT name, range_min_c, range_max_c, stability_budget_s, activation_energy_kj_mol"
        " FROM products WHERE gtin = %s",
        (GTIN,),
    ).fetchone()
    assert row is not None
    assert row[0] == "Insulin pens" and (row[1], row[2], row[3]) == (2, 8, 72 * 3600)
    assert row[4] == pytest.approx(83.144, rel=1e-6)
    assert db.execute("SELECT profile_id FROM product_profiles WHERE gtin = %s", (GTIN,)).fetchone() == (
        "2-8C",
    )
    assert report.import_id is not None
    audit = db.execute(
        "SELECT action, entity, new_value FROM audit_trail WHERE entity_key = %s",
        (f"import/{report.import_id}",),
    ).fetchone()
    assert audit is not None and audit[0] == "import" and audit[2]["rows"] == 2

    # The same file again changes nothing and records no import.
    again = run_import(db, org=1, kind=Kind.PRODUCTS, data=PRODUCTS_CSV.encode(), actor="test")
    assert (again.committed, again.inserted, again.updated, again.unchanged) == (True, 0, 0, 2)
    assert again.import_id is None
    assert count(db, "imports") == 1

    changed = PRODUCTS_CSV.replace("Vaccine", "Vaccine, 10 doses")
    third = run_import(db, org=1, kind=Kind.PRODUCTS, data=changed.encode(), actor="test")
    assert (third.inserted, third.updated, third.unchanged) == (0, 1, 1)


def test_a_bad_row_commits_nothing_and_every_error_is_reported(db: psycopg.Connection) -> None:
    data = (
        "gtin,name,range_min_c,range_max_c,default_profile\n"
        f"{gtin(1)},Good one,2,8,2-8C\n"
        "09506000134353,Bad check digit,2,8,\n"
        f"{gtin(2)},,2,8,\n"
        f"{gtin(3)},Upside down,8,2,\n"
        f"{gtin(4)},No such profile,2,8,nope\n"
        f"{gtin(1)},Twice,2,8,\n"
    )
    report = run_import(db, org=1, kind="products", data=data.encode(), actor="test")
    assert not report.committed
    problems = {(e.row, e.field): e.reason for e in report.errors}
    assert problems[(2, "gtin")].startswith("bad GTIN check digit")
    assert problems[(3, "name")] == "name is required"
    assert "maximum" in problems[(4, "range_max_c")]
    assert "unknown alarm profile" in problems[(5, "default_profile")]
    assert problems[(6, "gtin")] == "duplicate product (row 1)"
    assert report.error_count == 5
    assert count(db, "products") == 0


def test_unknown_and_missing_columns_are_row_zero(db: psycopg.Connection) -> None:
    report = run_import(db, org=1, kind="products", data=b"gtin,title\n09506000134352,x\n", actor="t")
    assert {(e.row, e.field) for e in report.errors} == {(0, "title"), (0, "name")}
    report = run_import(db, org=1, kind="lots", data=b"\xff\xfe", actor="t")
    assert report.errors[0].row == 0 and "UTF-8" in report.errors[0].reason
    report = run_import(db, org=1, kind="lots", data=b"   \n", actor="t")
    assert report.errors[0].reason == "the file is empty"


def test_lots_as_json_lines_dry_run_then_commit(db: psycopg.Connection) -> None:
    import_products(db)
    lines = [
        {"gtin": GTIN, "lot": "A1", "expiry": "2027-05-31", "quantity": 400, "serials": ["S0001..S0400"]},
        {"gs1": f"(01){GTIN}(17)270600(10)A2", "quantity": 10, "serials": "X1 X2|X3"},
        {"gtin": GTIN2, "lot": "B1", "stability_budget_s": 3600},
    ]
    data = b"\n".join(orjson.dumps(x) for x in lines) + b"\n"
    dry = run_import(db, org=1, kind="lots", data=data, actor="test", dry_run=True)
    assert (dry.committed, dry.dry_run, dry.inserted, dry.error_count) == (False, True, 3, 0)
    assert count(db, "lots") == 0

    report = run_import(db, org=1, kind="lots", data=data, actor="test")
    assert (report.committed, report.inserted) == (True, 3)
    rows = db.execute(
        "SELECT lot, expiry, quantity, serials, stability_budget_s FROM lots ORDER BY gtin DESC, lot"
    ).fetchall()
    assert rows == [
        ("A1", date(2027, 5, 31), 400, ["S0001..S0400"], 72 * 3600),  # the product's budget
        ("A2", date(2027, 6, 30), 10, ["X1", "X2", "X3"], 72 * 3600),  # DD=00: the month's last day
        ("B1", None, None, None, 3600),
    ]
    again = run_import(db, org=1, kind="lots", data=data, actor="test")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)


def test_lot_errors_from_the_file_and_from_the_database(db: psycopg.Connection) -> None:
    import_products(db)
    assert run_import(
        db, org=1, kind="lots", data=f"gtin,lot,expiry\n{GTIN},A1,2027-05-31\n".encode(), actor="t"
    ).committed
    data = (
        "gtin,lot,expiry,quantity\n"
        f"{GTIN},A1,2027-06-30,1\n"  # registered with another expiry
        f"{gtin(77)},Z1,,\n"  # unknown product
        f"{GTIN},A2,,5\n"
        f"{GTIN},A2,,6\n"  # duplicate lot
        f"{GTIN},bad lot,,\n"
        f"{GTIN},A3,31.05.2027,\n"
        f"{GTIN},A4,,-1\n"
        f"{GTIN},A5,,1.5\n"
    )
    report = run_import(db, org=1, kind="lots", data=data.encode(), actor="t")
    problems = {(e.row, e.field): e.reason for e in report.errors}
    assert "registered with expiry 2027-05-31" in problems[(1, "expiry")]
    assert problems[(2, "gtin")] == f"unknown product {gtin(77)}"
    assert problems[(4, "lot")] == "duplicate lot (row 3)"
    assert "character set" in problems[(5, "lot")]
    assert "not a date" in problems[(6, "expiry")]
    assert "at least 0" in problems[(7, "quantity")]
    assert "whole number" in problems[(8, "quantity")]
    assert not report.committed
    assert count(db, "lots") == 1
    data = (
        f'{{"gtin": "{GTIN}", "lot": "Q1", "quantity": 2.5}}\n'
        f'{{"gtin": "{GTIN}", "lot": "Q2", "quantity": true}}\n'
        "[1]\n{bad\n"
    ).encode()
    report = run_import(db, org=1, kind="lots", data=data, actor="t")
    assert [(e.row, e.field) for e in report.errors] == [
        (3, None),
        (4, None),
        (1, "quantity"),
        (2, "quantity"),
    ]
    assert "whole number" in report.errors[2].reason and "not a number" in report.errors[3].reason


def _shipment_world(db: psycopg.Connection) -> None:
    import_products(db)
    lots = f"gtin,lot\n{GTIN},A1\n{GTIN},A2\n{GTIN2},B1\n"
    assert run_import(db, org=1, kind="lots", data=lots.encode(), actor="t").committed
    for device in ("L1", "L2"):
        registry.create_device(db, org=1, device=Device(id=device), actor="t")


SHIPMENTS = (
    "id,profile,origin,destination,destination_gln,carrier,mode,planned_departure,planned_arrival,"
    "gtin,lot,quantity\n"
    "SO-1,2-8C,Plant A,Hospital B,9520123456788,DHL,road,2026-11-24T08:00:00Z,2026-11-25T08:00:00Z,"
    f"{GTIN},A1,400\n"
    "SO-1,2-8C,Plant A,Hospital B,9520123456788,DHL,road,2026-11-24T08:00:00Z,2026-11-25T08:00:00Z,"
    f"{GTIN2},B1,20\n"
    "SO-2,15-25C,Plant A,Pharmacy C,,,air,,,,,\n"
)


def test_shipments_with_lines(db: psycopg.Connection) -> None:
    _shipment_world(db)
    report = run_import(db, org=1, kind="shipments", data=SHIPMENTS.encode(), actor="t")
    assert report.committed, report.errors
    assert report.changes == {
        "shipments": {"inserted": 2, "updated": 0},
        "shipment_lots": {"inserted": 2, "updated": 0},
    }
    shipment = registry.get_shipment(db, org=1, shipment_id="SO-1").shipment
    assert {(sl.lot.lot, sl.quantity) for sl in shipment.lots} == {("A1", 400), ("B1", 20)}
    assert db.execute(
        "SELECT carrier, mode, destination_gln FROM shipments WHERE id = 'SO-1'"
    ).fetchone() == (
        "DHL",
        "road",
        "9520123456788",
    )
    again = run_import(db, org=1, kind="shipments", data=SHIPMENTS.encode(), actor="t")
    assert (again.inserted, again.updated) == (0, 0)
    more = SHIPMENTS.replace(f"{GTIN2},B1,20", f"{GTIN2},B1,25")
    assert run_import(db, org=1, kind="shipments", data=more.encode(), actor="t").changes[
        "shipment_lots"
    ] == {
        "inserted": 0,
        "updated": 1,
    }


def test_shipment_errors(db: psycopg.Connection) -> None:
    _shipment_world(db)
    assert run_import(db, org=1, kind="shipments", data=SHIPMENTS.encode(), actor="t").committed
    data = (
        "id,profile,origin,gtin,lot,quantity,destination_gln,mode\n"
        f"SO-1,15-25C,Plant A,{GTIN},A1,400,,\n"  # existing shipment, other profile
        f"SO-3,2-8C,Plant A,{GTIN},NOPE,1,,\n"  # unknown lot
        f"SO-3,2-8C,Plant Z,{GTIN},A2,1,,\n"  # header differs
        "SO-4,2-8C,,,,,9520123456789,\n"  # bad GLN
        "SO-5,2-8C,,,,,,boat\n"
        "SO 6,2-8C,,,,,,\n"
    )
    report = run_import(db, org=1, kind="shipments", data=data.encode(), actor="t")
    problems = {(e.row, e.field): e.reason for e in report.errors}
    assert "travels under profile 2-8C" in problems[(1, "profile")]
    assert problems[(2, "lot")] == f"unknown lot {GTIN}/NOPE"
    assert "differs from its header in row 2" in problems[(3, "id")]
    assert "bad GLN check digit" in problems[(4, "destination_gln")]
    assert "mode must be one of" in problems[(5, "mode")]
    assert "must match" in problems[(6, "id")]
    assert count(db, "shipments") == 2


def test_assignments_overlaps_and_readings_that_join_the_shipment(db: psycopg.Connection) -> None:
    _shipment_world(db)
    assert run_import(db, org=1, kind="shipments", data=SHIPMENTS.encode(), actor="t").committed
    key = db.execute("SELECT key FROM devices WHERE id = 'L1'").fetchone()
    assert key is not None
    # Readings that arrived before the ERP said which shipment the logger rides with.
    db.execute(
        "INSERT INTO readings (org_id, device_key, seq, t, c) VALUES"
        " (1, %s, 1, '2026-11-24T09:00:00Z', 4.5), (1, %s, 1, '2026-11-24T10:00:00Z', 9.5),"
        " (1, %s, 2, '2026-11-26T10:00:00Z', 5.0)",
        (key[0], key[0], key[0]),
    )
    data = (
        "device,shipment,from,to\n"
        "L1,SO-1,2026-11-24T08:00:00Z,2026-11-25T08:00:00Z\n"
        "L2,SO-2,2026-11-24T08:00:00+01:00,\n"
    )
    report = run_import(db, org=1, kind="assignments", data=data.encode(), actor="t")
    assert (report.committed, report.inserted) == (True, 2), report.errors
    linked = db.execute("SELECT t, shipment_key FROM readings ORDER BY t").fetchall()
    so1 = db.execute("SELECT key FROM shipments WHERE id = 'SO-1'").fetchone()
    assert so1 is not None
    assert [s for _, s in linked] == [so1[0], so1[0], None]
    queued = db.execute("SELECT shipment_key, late, min_c, max_c FROM rule_queue").fetchall()
    assert queued == [(so1[0], True, 4.5, 9.5)]
    # Each logger assigned gets its next config (published retained): L2 rides SO-2 from now on,
    # L1's window is over, so its config names no shipment.
    configs = dict(
        db.execute(
            "SELECT d.id, c.body ->> 'shipment' FROM device_configs c JOIN devices d ON d.key = c.device_key"
        ).fetchall()
    )
    assert configs == {"L1": None, "L2": "SO-2"}
    configured = db.execute(
        "SELECT entity_key, new_value ->> 'version' FROM audit_trail WHERE entity = 'device_config'"
        " ORDER BY entity_key"
    ).fetchall()
    assert configured == [("L1", "1"), ("L2", "1")]  # one audit row each, in the hash chain
    assert audit.verify_trail(db).intact
    versions = db.execute("SELECT sum(version) FROM device_configs").fetchone()
    again = run_import(db, org=1, kind="assignments", data=data.encode(), actor="t")
    assert (again.committed, again.inserted, again.unchanged) == (True, 0, 2)
    assert db.execute("SELECT sum(version) FROM device_configs").fetchone() == versions  # nothing new

    clash = (
        "device,shipment,from,to\n"
        "L1,SO-2,2026-11-24T20:00:00Z,2026-11-26T00:00:00Z\n"  # overlaps L1 on SO-1
        "L3,SO-2,2026-11-24T20:00:00Z,\n"  # unknown device
        "L1,SO-9,2026-12-01T00:00:00Z,\n"  # unknown shipment
        "L1,SO-2,2026-12-03T00:00:00Z,2026-12-05T00:00:00Z\n"
        "L1,SO-1,2026-12-04T00:00:00Z,2026-12-06T00:00:00Z\n"  # overlaps the row above
        "L1,SO-1,2026-12-09T00:00:00Z,2026-12-08T00:00:00Z\n"
        "L1,SO-1,2026-12-09T00:00:00,\n"
    )
    report = run_import(db, org=1, kind="assignments", data=clash.encode(), actor="t")
    problems = {(e.row, e.field): e.reason for e in report.errors}
    assert problems[(1, "from")].startswith("overlapping assignment: device L1 rides with shipment SO-1")
    assert problems[(2, "device")] == "unknown device L3"
    assert problems[(3, "shipment")] == "unknown shipment SO-9"
    assert problems[(5, "from")] == "overlapping assignment: device L1 (row 4)"
    assert "end after it starts" in problems[(6, "to")]
    assert "UTC offset" in problems[(7, "from")]
    assert count(db, "device_assignments") == 2


def test_sites(db: psycopg.Connection) -> None:
    data = b"gln,name,address\n9520123456788,DC North,1 Quay Road\n9520123456788,Again,\n"
    report = run_import(db, org=1, kind="sites", data=data, actor="t")
    assert [(e.row, e.field, e.reason) for e in report.errors] == [(2, "gln", "duplicate site (row 1)")]
    report = run_import(db, org=1, kind="sites", data=data.split(b"\n9520123456788,Again")[0], actor="t")
    assert report.committed and count(db, "sites") == 1


# --- over HTTP and from the command line ---------------------------------------------------------


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with open_pool(db_dsn, max_size=2) as pool:
        app = create_app(Settings(database_url=db_dsn), pool=pool)
        with TestClient(app) as c:
            yield c


def test_imports_over_http(client: TestClient, db: psycopg.Connection) -> None:
    erp = {"Authorization": "Bearer " + auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="t")}
    viewer = {
        "Authorization": "Bearer " + auth.create_token(db, org=1, name="v", role=Role.VIEWER, actor="t")
    }
    csv_headers = {**erp, "Content-Type": "text/csv"}
    res = client.post(
        "/api/v1/imports?kind=products&dry_run=true", content=PRODUCTS_CSV.encode(), headers=csv_headers
    )
    assert res.status_code == 200, res.text
    assert (res.json()["committed"], res.json()["inserted"]) == (False, 2)
    assert count(db, "products") == 0
    res = client.post("/api/v1/imports?kind=products", content=PRODUCTS_CSV.encode(), headers=csv_headers)
    body = res.json()
    assert (res.status_code, body["committed"], body["rows"], body["errors"]) == (200, True, 2, [])
    bad = b"gtin,lot\n09506000134353,A1\n"
    res = client.post("/api/v1/imports?kind=lots", content=bad, headers=csv_headers)
    assert res.status_code == 422
    body = res.json()
    assert (body["error"], body["field"]) == ("ValidationError", "body")
    assert body["details"] == [{"field": "row 1.gtin", "message": "bad GTIN check digit: 09506000134353"}]
    assert body["report"]["committed"] is False
    assert body["report"]["errors"][0] == {
        "row": 1,
        "field": "gtin",
        "reason": "bad GTIN check digit: 09506000134353",
    }
    assert client.post("/api/v1/imports?kind=lots", content=bad, headers=viewer).status_code == 403
    assert client.post("/api/v1/imports?kind=pallets", content=bad, headers=erp).status_code == 422
    assert client.post("/api/v1/imports?kind=lots", content=bad).status_code == 401


def test_imports_have_a_body_limit_of_their_own(db_dsn: str, db: psycopg.Connection) -> None:
    token = auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="t")
    h = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    data = ("gtin,name\n" + "".join(f"{gtin(n)},product {n}\n" for n in range(400))).encode()
    assert len(data) > 4096
    with open_pool(db_dsn, max_size=2) as pool:
        app = create_app(Settings(database_url=db_dsn, http_max_body_bytes=4096), pool=pool)
        with TestClient(app) as c:
            res = c.post("/api/v1/imports?kind=products", content=data, headers=h)
            assert (res.status_code, res.json()["inserted"]) == (200, 400), res.text
            big = {"id": "D1", "name": "x" * 5000}
            assert c.post("/api/v1/devices", json=big, headers=h).status_code == 413


def test_the_import_command(
    db_dsn: str,
    db: psycopg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    products = tmp_path / "products.csv"
    products.write_text(PRODUCTS_CSV, encoding="utf-8")
    assert main(["import", str(products), "--kind", "products", "--dry-run"]) == 0
    assert "dry run, nothing committed" in capsys.readouterr().out
    assert count(db, "products") == 0
    assert main(["import", str(products), "--kind", "products"]) == 0
    assert "2 rows, 2 inserted, 0 updated, 0 unchanged; committed" in capsys.readouterr().out
    assert count(db, "products") == 2
    lots = tmp_path / "lots.jsonl"
    lots.write_text('{"gtin": "09506000134353", "lot": "A"}\n', encoding="utf-8")
    assert main(["import", str(lots), "--kind", "lots", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["errors"][0]["reason"].startswith("bad GTIN check digit")


def test_the_progress_bar_draws_each_phase() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, enabled=True)
    bar("checking", 0, 100)
    bar("checking", 100, 100)
    bar("writing", 100, 100)
    text = out.getvalue()
    assert "checking  [" + "." * 30 + "] 0/100" in text
    assert "writing   [" + "#" * 30 + "] 100/100\n" in text
    silent = io.StringIO()
    ProgressBar(silent, enabled=False)("checking", 1, 2)
    assert silent.getvalue() == ""
