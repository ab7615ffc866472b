"""Master data one record at a time, over the real API on a real PostgreSQL: create, read, list
with filters and cursor pages, and edits under optimistic concurrency (ETag / If-Match), each
audited with its old and new values; QA alone changes what alarms are judged by; a corrected
assignment moves readings between shipments and the real rules runner follows with its alerts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from coldchain.access import Role
from coldchain.domain import Device
from coldchain.gs1 import gtin_check_digit
from erp.imports import run_import
from rules.runner import drain
from storage import auth, registry
from storage.assignments import time_segments
from storage.readings import ReadingRows, copy_rows
from tests.support.api import api_client

GTIN = "09506000134352"
GLN = "9520123456788"
T0 = datetime(2026, 11, 24, 8, tzinfo=UTC)
MIN = 60_000


def gtin(n: int) -> str:
    body = f"0950600{n:06d}"
    return body + str(gtin_check_digit(body))


def gln(n: int) -> str:
    body = f"952012{n:06d}"
    return body + str(gtin_check_digit(body))


@pytest.fixture
def tokens(db: psycopg.Connection) -> dict[str, dict[str, str]]:
    out = {}
    for role in (Role.ADMIN, Role.ERP, Role.LOGISTICS, Role.QA, Role.VIEWER):
        token = auth.create_token(db, org=1, name=f"{role.value}-key", role=role, actor="test")
        out[role.value] = {"Authorization": f"Bearer {token}"}
    return out


@pytest.fixture
def client(db_dsn: str) -> Iterator[TestClient]:
    with api_client(db_dsn) as c:
        yield c


def _audit(db: psycopg.Connection, entity: str, key: str) -> list[tuple[str, Any, Any]]:
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT action, old_value, new_value FROM audit_trail WHERE entity = %s AND entity_key = %s"
            " ORDER BY id",
            (entity, key),
        ).fetchall()
    ]


# -- optimistic concurrency ---------------------------------------------------------------------


def test_two_editors_with_the_same_etag_the_second_gets_412(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    erp = tokens["erp"]
    res = client.post("/api/v1/products", json={"gtin": GTIN, "name": "Insulin pens"}, headers=erp)
    assert res.status_code == 201, res.text
    assert res.headers["ETag"] == '"v1"' and res.json()["version"] == 1
    read = client.get(f"/api/v1/products/{GTIN}", headers=erp)
    etag = read.headers["ETag"]
    assert etag == '"v1"'

    first = client.patch(
        f"/api/v1/products/{GTIN}", json={"name": "Insulin pens 3 ml"}, headers={**erp, "If-Match": etag}
    )
    assert first.status_code == 200, first.text
    assert first.headers["ETag"] == '"v2"' and first.json()["name"] == "Insulin pens 3 ml"
    second = client.patch(
        f"/api/v1/products/{GTIN}", json={"name": "Insulin pens (old)"}, headers={**erp, "If-Match": etag}
    )
    assert second.status_code == 412, second.text
    assert second.json()["error"] == "PreconditionFailedError" and "version 2" in second.json()["message"]
    # nothing of the second edit was kept, and only the first is in the trail with old and new values
    assert client.get(f"/api/v1/products/{GTIN}", headers=erp).json()["name"] == "Insulin pens 3 ml"
    assert _audit(db, "product", GTIN)[-1] == (
        "update",
        {"name": "Insulin pens"},
        {"name": "Insulin pens 3 ml"},
    )

    missing = client.patch(f"/api/v1/products/{GTIN}", json={"name": "x"}, headers=erp)
    assert missing.status_code == 428 and missing.json()["error"] == "PreconditionRequiredError"
    weak = client.patch(f"/api/v1/products/{GTIN}", json={"name": "x"}, headers={**erp, "If-Match": 'W/"v2"'})
    assert weak.status_code == 412  # If-Match compares strongly
    listed = client.patch(
        f"/api/v1/products/{GTIN}", json={"name": "Pens"}, headers={**erp, "If-Match": '"v1", "v2"'}
    )
    assert listed.status_code == 200 and listed.headers["ETag"] == '"v3"'
    star = client.patch(f"/api/v1/products/{GTIN}", json={"name": "Pens"}, headers={**erp, "If-Match": "*"})
    assert star.status_code == 200 and star.headers["ETag"] == '"v3"'  # nothing changed: same version
    gone = client.patch(f"/api/v1/products/{gtin(9)}", json={"name": "x"}, headers={**erp, "If-Match": "*"})
    assert gone.status_code == 404


def test_a_bulk_import_changing_a_record_makes_an_open_edit_stale(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    erp = tokens["erp"]
    res = client.post("/api/v1/sites", json={"gln": GLN, "name": "DC North"}, headers=erp)
    etag = res.headers["ETag"]
    report = run_import(db, org=1, kind="sites", data=f"gln,name\n{GLN},DC Nord\n".encode(), actor="erp")
    assert report.committed and report.updated == 1
    res = client.patch(f"/api/v1/sites/{GLN}", json={"address": "Dock 4"}, headers={**erp, "If-Match": etag})
    assert res.status_code == 412
    fresh = client.get(f"/api/v1/sites/{GLN}", headers=erp)
    assert fresh.json()["name"] == "DC Nord" and fresh.headers["ETag"] == '"v2"'
    res = client.patch(
        f"/api/v1/sites/{GLN}", json={"address": "Dock 4"}, headers={**erp, "If-Match": fresh.headers["ETag"]}
    )
    assert res.status_code == 200 and res.json()["address"] == "Dock 4"
    assert _audit(db, "site", GLN)[-1] == ("update", {"address": None}, {"address": "Dock 4"})


def test_alarm_relevant_product_fields_are_qa_s_to_change(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    body = {
        "gtin": GTIN,
        "name": "Vaccine",
        "range_min_c": 2.0,
        "range_max_c": 8.0,
        "stability_budget_s": 3600,
    }
    assert client.post("/api/v1/products", json=body, headers=tokens["erp"]).status_code == 201
    star = {"If-Match": "*"}
    for role in ("erp", "logistics", "admin"):
        res = client.patch(
            f"/api/v1/products/{GTIN}", json={"range_max_c": 25.0}, headers={**tokens[role], **star}
        )
        assert res.status_code == 403, (role, res.text)
        res = client.patch(
            f"/api/v1/products/{GTIN}", json={"default_profile": "15-25C"}, headers={**tokens[role], **star}
        )
        assert res.status_code == 403, role
    # a name and a limit in one request need both permissions: QA alone may not rename
    both = client.patch(
        f"/api/v1/products/{GTIN}", json={"name": "V", "range_max_c": 25.0}, headers={**tokens["qa"], **star}
    )
    assert both.status_code == 403
    res = client.patch(
        f"/api/v1/products/{GTIN}",
        json={"range_max_c": 25.0, "default_profile": "15-25C"},
        headers={**tokens["qa"], **star},
    )
    assert res.status_code == 200, res.text
    assert (res.json()["range_max_c"], res.json()["default_profile"]) == (25.0, "15-25C")
    assert res.headers["ETag"] == '"v2"'  # the product row and its profile: one version step
    bad = client.patch(
        f"/api/v1/products/{GTIN}", json={"range_min_c": 30.0}, headers={**tokens["qa"], **star}
    )
    assert bad.status_code == 422 and "maximum" in bad.json()["message"]
    unknown = client.patch(
        f"/api/v1/products/{GTIN}", json={"default_profile": "no-such"}, headers={**tokens["qa"], **star}
    )
    assert unknown.status_code == 404
    assert (
        client.patch(
            f"/api/v1/products/{GTIN}", json={"name": "Vaccine 10"}, headers={**tokens["erp"], **star}
        ).status_code
        == 200
    )
    trail = _audit(db, "product", GTIN)
    assert trail[1] == (
        "update",
        {"range_max_c": 8.0, "default_profile": None},
        {"range_max_c": 25.0, "default_profile": "15-25C"},
    )
    # the lot's stability budget is QA's too; its quantity is not
    assert (
        client.post(f"/api/v1/products/{GTIN}/lots", json={"lot": "A1"}, headers=tokens["erp"]).status_code
        == 201
    )
    lot = client.get(f"/api/v1/products/{GTIN}/lots/A1", headers=tokens["viewer"]).json()
    assert lot["stability_budget_s"] == 3600  # taken from its product
    url = f"/api/v1/products/{GTIN}/lots/A1"
    assert (
        client.patch(url, json={"stability_budget_s": 7200}, headers={**tokens["erp"], **star}).status_code
        == 403
    )
    assert client.patch(url, json={"quantity": 40}, headers={**tokens["erp"], **star}).status_code == 200
    assert (
        client.patch(url, json={"stability_budget_s": 7200}, headers={**tokens["qa"], **star}).status_code
        == 200
    )
    assert client.patch(url, json={"quantity": 1}, headers={**tokens["viewer"], **star}).status_code == 403


# -- lists: filters and cursor pages ---------------------------------------------------------------


def _walk(client: TestClient, url: str, headers: dict[str, str], key: str, during: Any = None) -> list[str]:
    seen: list[str] = []
    res = client.get(url, headers=headers)
    pages = 0
    while True:
        assert res.status_code == 200, res.text
        seen += [row[key] for row in res.json()]
        pages += 1
        if during is not None:
            during(pages)
        if "X-Next-Cursor" not in res.headers:
            assert "Link" not in res.headers
            return seen
        link = res.headers["Link"]
        assert link.endswith('>; rel="next"') and f"cursor={res.headers['X-Next-Cursor']}" in link
        res = client.get(link[1 : link.index(">")], headers=headers)


def test_walking_a_list_while_rows_are_inserted_sees_each_row_once(
    client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    erp = tokens["erp"]
    for n in range(0, 50, 2):  # even numbers now; odd ones arrive during the walk
        res = client.post("/api/v1/products", json={"gtin": gtin(n), "name": f"Product {n}"}, headers=erp)
        assert res.status_code == 201
    before = {gtin(n) for n in range(0, 50, 2)}
    inserted: list[str] = []

    def insert(page: int) -> None:
        for n in range(4 * page + 1, 4 * page + 5, 2):  # some before the cursor, some after
            client.post("/api/v1/products", json={"gtin": gtin(n), "name": f"Product {n}"}, headers=erp)
            inserted.append(gtin(n))

    seen = _walk(client, "/api/v1/products?limit=7", erp, "gtin", during=insert)
    assert len(seen) == len(set(seen)), "a row came twice"
    assert before <= set(seen), f"missed {sorted(before - set(seen))}"
    assert set(seen) <= before | set(inserted)
    assert seen == sorted(seen)
    # the filter and the pages together
    named = _walk(client, "/api/v1/products?limit=3&name_prefix=product%201", erp, "gtin")
    assert set(named) == {
        gtin(n) for n in range(100) if f"{n}".startswith("1") and gtin(n) in set(seen) | set(inserted)
    }
    bad = client.get("/api/v1/products?cursor=bm90LWEtY3Vyc29y", headers=erp)
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"
    other = client.get("/api/v1/products", headers=erp)
    cursor_of_sites = _cursor_of(client, "/api/v1/sites", erp)
    assert other.status_code == 200 and cursor_of_sites is None


def _cursor_of(client: TestClient, url: str, headers: dict[str, str]) -> str | None:
    return client.get(url, headers=headers).headers.get("X-Next-Cursor")


def test_shipments_list_filters_and_pages_and_stays_a_bare_list(
    client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    h = tokens["logistics"]
    for n in range(12):
        res = client.post("/api/v1/shipments", json={"id": f"SO-{n:03d}"}, headers=h)
        assert res.status_code == 201 and res.headers["ETag"].startswith('"v')
    started = datetime.now(UTC)
    for n in range(0, 12, 3):
        etag = client.get(f"/api/v1/shipments/SO-{n:03d}", headers=h).headers["ETag"]
        res = client.patch(
            f"/api/v1/shipments/SO-{n:03d}",
            json={"carrier": "Cool Freight", "state": "in_transit", "origin_gln": GLN, "mode": "road"},
            headers={**h, "If-Match": etag},
        )
        assert res.status_code == 200, res.text
    everything = client.get("/api/v1/shipments", headers=h)
    assert isinstance(everything.json(), list) and len(everything.json()) == 12
    assert "X-Next-Cursor" not in everything.headers  # no limit: every row, as before
    moving = ["SO-000", "SO-003", "SO-006", "SO-009"]
    assert [s["id"] for s in client.get("/api/v1/shipments?state=in_transit", headers=h).json()] == moving
    assert [
        s["id"] for s in client.get("/api/v1/shipments?carrier=Cool%20Freight", headers=h).json()
    ] == moving
    assert [s["id"] for s in client.get(f"/api/v1/shipments?origin={GLN}", headers=h).json()] == moving
    since = started.isoformat().replace("+00:00", "Z")
    assert [
        s["id"] for s in client.get("/api/v1/shipments", params={"updated_since": since}, headers=h).json()
    ] == moving
    assert client.get("/api/v1/shipments?state=planned", headers=h).json()[0]["id"] == "SO-001"
    assert _walk(client, "/api/v1/shipments?limit=5", h, "id") == [f"SO-{n:03d}" for n in range(12)]
    assert _walk(client, "/api/v1/shipments?limit=3&state=in_transit", h, "id") == moving
    assert client.get("/api/v1/shipments?state=lost", headers=h).status_code == 422


def test_lots_of_a_product_by_expiry(client: TestClient, tokens: dict[str, dict[str, str]]) -> None:
    h = tokens["erp"]
    client.post("/api/v1/products", json={"gtin": GTIN, "name": "Pens"}, headers=h)
    for n, expiry in enumerate(["2027-01-31", "2027-03-31", "2027-06-30", None]):
        body: dict[str, Any] = {"lot": f"L{n}", "serials": ["S0001..S0400", "S0999"], "quantity": 400}
        if expiry:
            body["expiry"] = expiry
        assert client.post(f"/api/v1/products/{GTIN}/lots", json=body, headers=h).status_code == 201
    assert client.post(f"/api/v1/products/{GTIN}/lots", json={"lot": "L0"}, headers=h).status_code == 409
    assert client.post(f"/api/v1/products/{gtin(7)}/lots", json={"lot": "L0"}, headers=h).status_code == 404
    url = f"/api/v1/products/{GTIN}/lots"
    assert [x["lot"] for x in client.get(url, params={"expires_before": "2027-04-01"}, headers=h).json()] == [
        "L0",
        "L1",
    ]
    assert [x["lot"] for x in client.get(url, params={"expires_from": "2027-03-31"}, headers=h).json()] == [
        "L1",
        "L2",
    ]
    assert _walk(client, f"{url}?limit=1", h, "lot") == ["L0", "L1", "L2", "L3"]
    lot = client.get(f"{url}/L0", headers=h)
    assert lot.json()["serials"] == ["S0001..S0400", "S0999"]
    res = client.patch(
        f"{url}/L0",
        json={"expiry": "2027-02-28", "serials": None},
        headers={**h, "If-Match": lot.headers["ETag"]},
    )
    assert res.status_code == 200 and res.json()["expiry"] == "2027-02-28" and res.json()["serials"] is None
    bad = client.post(url, json={"lot": "L9", "serials": ["A..B..C"]}, headers=h)
    assert bad.status_code == 422


def test_shipment_legs_and_states(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    h = tokens["logistics"]
    res = client.post("/api/v1/shipments", json={"id": "SO-9"}, headers=h)
    etag = res.headers["ETag"]
    legs = [
        {
            "seq": 1,
            "origin_gln": GLN,
            "destination_gln": gln(5),
            "carrier": "Air Cargo",
            "mode": "air",
            "planned_departure": "2026-11-24T08:00:00Z",
            "planned_arrival": "2026-11-24T14:00:00Z",
        },
        {"seq": 2, "origin_gln": gln(5), "destination_gln": gln(6), "mode": "road"},
    ]
    res = client.patch("/api/v1/shipments/SO-9", json={"legs": legs}, headers={**h, "If-Match": etag})
    assert res.status_code == 200, res.text
    body = res.json()
    assert [leg["seq"] for leg in body["legs"]] == [1, 2] and body["legs"][0]["state"] == "planned"
    assert client.get("/api/v1/shipments/SO-9", headers=h).headers["ETag"] == res.headers["ETag"] != etag
    star = {**h, "If-Match": "*"}
    legs[0]["state"] = "delivered"
    assert (
        client.patch(
            "/api/v1/shipments/SO-9", json={"state": "delivered", "legs": legs}, headers=star
        ).status_code
        == 200
    )
    back = client.patch("/api/v1/shipments/SO-9", json={"state": "in_transit"}, headers=star)
    assert back.status_code == 409 and "delivered" in back.json()["message"]
    order = client.patch("/api/v1/shipments/SO-9", json={"legs": [{"seq": 2}]}, headers=star)
    assert order.status_code == 422
    times = client.patch(
        "/api/v1/shipments/SO-9",
        json={"actual_departure": "2026-11-24T10:00:00Z", "actual_arrival": "2026-11-24T09:00:00Z"},
        headers=star,
    )
    assert times.status_code == 422
    assert client.patch("/api/v1/shipments/SO-9", json={"profile": "15-25C"}, headers=star).status_code == 422
    trail = _audit(db, "shipment", "SO-9")
    assert (
        trail[-1][0] == "update"
        and trail[-1][1]["state"] == "planned"
        and trail[-1][2]["state"] == "delivered"
    )


# -- assignments: add, end, correct; readings and alerts follow ----------------------------------------


def _readings(db: psycopg.Connection, device_key: int, temps: np.ndarray) -> None:
    """A four-hour trip's readings, stored on no shipment (as ingest stores an unassigned logger)."""
    n = len(temps)
    t = int(T0.timestamp() * 1000) + np.arange(n, dtype=np.int64) * MIN
    with db.transaction():
        copy_rows(
            db,
            ReadingRows(
                org_id=np.ones(n, np.int16),
                device_key=np.full(n, device_key, np.int32),
                shipment_key=np.full(n, -1, np.int32),
                seq=np.zeros(n, np.int64),
                t_ms=t,
                celsius=temps.astype(np.float32),
                rh=np.full(n, np.nan, np.float32),
                flags=np.zeros(n, np.int16),
            ),
        )


def _linked(db: psycopg.Connection) -> dict[str | None, int]:
    rows = db.execute(
        "SELECT s.id, count(*) FROM readings r LEFT JOIN shipments s ON s.key = r.shipment_key GROUP BY s.id"
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def _alerts(db: psycopg.Connection) -> list[tuple[str, str, str]]:
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT s.id, a.kind, a.state FROM alerts a JOIN shipments s ON s.key = a.shipment_key"
            " WHERE a.kind <> 'stability_budget' ORDER BY a.id"
        ).fetchall()
    ]


def test_the_shipment_shows_the_erp_reference_and_a_new_one_is_a_new_etag(
    client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    erp = tokens["erp"]
    assert client.post("/api/v1/shipments", json={"id": "SO-R"}, headers=erp).status_code == 201
    before = client.get("/api/v1/shipments/SO-R", headers=erp)
    assert before.json()["erp_ref"] is None
    put = client.put("/api/v1/erp/shipments/SO-R/reference", json={"erp_ref": "WH/OUT/00042"}, headers=erp)
    assert put.status_code == 200, put.text
    after = client.get("/api/v1/shipments/SO-R", headers=erp)
    assert after.json()["erp_ref"] == "WH/OUT/00042"
    assert after.headers["ETag"] != before.headers["ETag"]  # the answer changed, so does its tag
    stale = client.patch(
        "/api/v1/shipments/SO-R", json={"carrier": "DHL"}, headers={**erp, "If-Match": before.headers["ETag"]}
    )
    assert stale.status_code == 412
    listed = client.get("/api/v1/shipments", headers=erp).json()
    assert [x["erp_ref"] for x in listed if x["id"] == "SO-R"] == ["WH/OUT/00042"]


@pytest.mark.both_engines
def test_a_corrected_window_moves_readings_and_the_rules_follow(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection, db_engine: str
) -> None:
    h = tokens["logistics"]
    registry.create_device(db, org=1, device=Device(id="TRK-1"), actor="t")
    for sid in ("SO-A", "SO-B"):
        assert (
            client.post("/api/v1/shipments", json={"id": sid, "profile": "2-8C"}, headers=h).status_code
            == 201
        )
    key = db.execute("SELECT key FROM devices WHERE id = 'TRK-1'").fetchone()
    assert key is not None
    temps = np.full(240, 5.0)
    temps[150:] = 11.0  # above 8 °C from 10:30 to the end of the data
    _readings(db, int(key[0]), temps)
    if db_engine == "timescale":  # the day's chunk compressed, as the policy does after 7 days
        db.execute("SELECT compress_chunk(c) FROM show_chunks('readings') AS c")
        assert db.execute(
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'readings' AND is_compressed"
        ).fetchone() == (1,)

    # the logger rides with SO-A all trip: the stored readings join it and the rules see the excursion
    res = client.post(
        "/api/v1/shipments/SO-A/assignments",
        json={"device": "TRK-1", "from": T0.isoformat(), "to": (T0 + timedelta(hours=4)).isoformat()},
        headers=h,
    )
    assert res.status_code == 201, res.text
    assignment = res.json()
    assert assignment["readings_relinked"] == 240 and res.headers["ETag"] == '"v1"'
    drain(db)
    assert _linked(db) == {"SO-A": 240}
    assert _alerts(db) == [("SO-A", "single", "open")]

    # an overlapping window for another shipment is refused, naming the ride it collides with
    clash = client.post(
        "/api/v1/shipments/SO-B/assignments",
        json={"device": "TRK-1", "from": (T0 + timedelta(hours=2)).isoformat()},
        headers=h,
    )
    assert clash.status_code == 409 and "SO-A" in clash.json()["message"]

    # correction: the logger left SO-A at 10:00 and rode with SO-B from then on
    url = f"/api/v1/assignments/{assignment['id']}"
    etag = client.get(url, headers=h).headers["ETag"]
    ended = client.patch(
        url,
        json={"to": (T0 + timedelta(hours=2)).isoformat(), "reason": "handed over at the hub at 10:00"},
        headers={**h, "If-Match": etag},
    )
    assert ended.status_code == 200, ended.text
    assert ended.json()["readings_relinked"] == 120 and ended.headers["ETag"] == '"v2"'
    stale = client.patch(url, json={"to": T0.isoformat()}, headers={**h, "If-Match": etag})
    assert stale.status_code == 412
    added = client.post(
        "/api/v1/shipments/SO-B/assignments",
        json={"device": "TRK-1", "from": (T0 + timedelta(hours=2)).isoformat()},
        headers=h,
    )
    assert added.status_code == 201 and added.json()["readings_relinked"] == 120
    assert _linked(db) == {"SO-A": 120, "SO-B": 120}
    drain(db)  # the real runner: SO-A's excursion is gone (withdrawn, superseded), SO-B's appears
    assert _alerts(db) == [("SO-A", "single", "withdrawn"), ("SO-B", "single", "open")]
    events = db.execute(
        "SELECT e.comment, e.actor FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
        " JOIN shipments s ON s.key = a.shipment_key WHERE s.id = 'SO-A' AND e.action = 'withdraw'"
    ).fetchall()
    assert len(events) == 1 and events[0][1] == "rules"
    assert "superseded by late data or corrected readings" in events[0][0]

    # and back: the window was right after all; SO-B's window is moved out of the way first
    b_url = f"/api/v1/assignments/{added.json()['id']}"
    moved = client.patch(
        b_url, json={"from": (T0 + timedelta(hours=4)).isoformat()}, headers={**h, "If-Match": '"v1"'}
    )
    assert moved.status_code == 200 and moved.json()["readings_relinked"] == 120
    assert _linked(db) == {"SO-A": 120, None: 120}
    back = client.patch(
        url, json={"to": (T0 + timedelta(hours=4)).isoformat()}, headers={**h, "If-Match": '"v2"'}
    )
    assert back.status_code == 200 and back.json()["readings_relinked"] == 120
    drain(db)
    assert _linked(db) == {"SO-A": 240}
    # SO-B has no reading left (its alert withdrawn); SO-A's excursion is back, and so is its
    # alert: the same episode, reinstated
    assert _alerts(db) == [("SO-A", "single", "open"), ("SO-B", "single", "withdrawn")]
    actions = db.execute(
        "SELECT e.action FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
        " JOIN shipments s ON s.key = a.shipment_key WHERE s.id = 'SO-A' ORDER BY e.id"
    ).fetchall()
    assert [a[0] for a in actions][-2:] == ["withdraw", "reinstate"]
    trail = _audit(db, "assignment", str(assignment["id"]))
    assert [t[0] for t in trail] == ["assign_device", "correct_assignment", "correct_assignment"]
    assert trail[1][1] == {"to": (T0 + timedelta(hours=4)).isoformat()}
    assert (
        trail[1][2]["to"] == (T0 + timedelta(hours=2)).isoformat() and trail[1][2]["readings_relinked"] == 120
    )
    listed = client.get("/api/v1/shipments/SO-A/assignments", headers=tokens["viewer"]).json()
    assert [(x["device"], x["version"]) for x in listed] == [("TRK-1", 3)]
    bad = client.patch(url, json={"to": T0.isoformat()}, headers={**h, "If-Match": "*"})
    assert bad.status_code == 422 and bad.json()["field"] == "to"


def test_a_ride_moved_to_another_shipment_and_back_withdraws_and_reinstates_its_alert(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    """Every reading leaves SO-A (its state is forgotten, its alert withdrawn) and joins SO-B; the
    correction undone, SO-A's first pass over its readings again reinstates the same alert."""
    h = tokens["logistics"]
    registry.create_device(db, org=1, device=Device(id="TRK-3"), actor="t")
    for sid in ("SO-A", "SO-B"):
        made = client.post("/api/v1/shipments", json={"id": sid, "profile": "2-8C"}, headers=h)
        assert made.status_code == 201
    key = db.execute("SELECT key FROM devices WHERE id = 'TRK-3'").fetchone()
    assert key is not None
    temps = np.full(240, 5.0)
    temps[150:] = 11.0
    _readings(db, int(key[0]), temps)
    res = client.post(
        "/api/v1/shipments/SO-A/assignments",
        json={"device": "TRK-3", "from": T0.isoformat(), "to": (T0 + timedelta(hours=4)).isoformat()},
        headers=h,
    )
    assert res.status_code == 201, res.text
    drain(db)
    [(first_id,)] = db.execute("SELECT id FROM alerts WHERE kind <> 'stability_budget'").fetchall()
    url = f"/api/v1/assignments/{res.json()['id']}"
    moved = client.patch(url, json={"shipment": "SO-B"}, headers={**h, "If-Match": '"v1"'})
    assert moved.status_code == 200 and moved.json()["readings_relinked"] == 240
    drain(db)
    assert _linked(db) == {"SO-B": 240}
    assert _alerts(db) == [("SO-A", "single", "withdrawn"), ("SO-B", "single", "open")]
    back = client.patch(url, json={"shipment": "SO-A"}, headers={**h, "If-Match": '"v2"'})
    assert back.status_code == 200 and back.json()["readings_relinked"] == 240
    drain(db)
    assert _alerts(db) == [("SO-A", "single", "open"), ("SO-B", "single", "withdrawn")]
    reinstated = db.execute(
        "SELECT action FROM alert_events WHERE alert_id = %s ORDER BY id", (first_id,)
    ).fetchall()
    assert [r[0] for r in reinstated][-2:] == ["withdraw", "reinstate"]


def test_the_logger_s_config_follows_its_assignment_when_added_moved_and_ended(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    h = tokens["logistics"]
    registry.create_device(db, org=1, device=Device(id="TRK-C"), actor="t")
    for sid in ("SO-C1", "SO-C2"):
        assert client.post("/api/v1/shipments", json={"id": sid}, headers=h).status_code == 201
    ride = {"device": "TRK-C", "from": T0.isoformat()}
    added = client.post("/api/v1/shipments/SO-C1/assignments", json=ride, headers=h)
    assert added.status_code == 201, added.text

    def desired() -> tuple[int, str | None]:
        got = client.get("/api/v1/devices/TRK-C/config", headers=h).json()
        return got["version"], got["desired"]["shipment"]

    assert desired() == (1, "SO-C1")
    url = f"/api/v1/assignments/{added.json()['id']}"
    assert client.patch(url, json={"shipment": "SO-C2"}, headers={**h, "If-Match": "*"}).status_code == 200
    assert desired() == (2, "SO-C2")
    assert client.patch(url, json={"reason": "checked"}, headers={**h, "If-Match": "*"}).status_code == 200
    assert desired() == (2, "SO-C2")  # nothing changed: no new config
    end = {"to": (T0 + timedelta(hours=1)).isoformat()}
    ended = client.patch(url, json=end, headers={**h, "If-Match": "*"})
    assert ended.status_code == 200
    assert desired() == (3, None)  # the ride is over: the logger rides with no shipment


def test_the_bulk_import_keeps_the_same_segregation_of_duties(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    """An ERP file may register products with their limits, but not change a registered
    product's labelled range afterwards; QA's import may."""
    first = f"gtin,name,range_min_c,range_max_c\n{GTIN},Vaccine,2,8\n".encode()
    changed = f"gtin,name,range_min_c,range_max_c\n{GTIN},Vaccine 10,2,25\n".encode()
    renamed = f"gtin,name,range_min_c,range_max_c\n{GTIN},Vaccine 10,2,8\n".encode()
    erp = {**tokens["erp"], "Content-Type": "text/csv"}
    assert client.post("/api/v1/imports?kind=products", content=first, headers=erp).status_code == 200
    res = client.post("/api/v1/imports?kind=products", content=changed, headers=erp)
    assert res.status_code == 422, res.text
    assert res.json()["report"]["errors"][0]["field"] == "range_min_c"
    assert "QA" in res.json()["report"]["errors"][0]["reason"]
    assert client.post("/api/v1/imports?kind=products", content=renamed, headers=erp).status_code == 200
    qa = {**tokens["qa"], "Content-Type": "text/csv"}
    # QA holds no `register`: the import route stays closed to it; QA changes limits one by one
    assert client.post("/api/v1/imports?kind=products", content=changed, headers=qa).status_code == 403
    report = run_import(db, org=1, kind="products", data=changed, actor="qa@home.org", may_change_limits=True)
    assert report.committed and report.updated == 1
    row = db.execute("SELECT range_max_c FROM products WHERE gtin = %s", (GTIN,)).fetchone()
    assert row == (25.0,)


def test_a_lowered_lot_budget_is_weighed_at_once(
    client: TestClient, tokens: dict[str, dict[str, str]], db: psycopg.Connection
) -> None:
    h = tokens["logistics"]
    registry.create_device(db, org=1, device=Device(id="TRK-2"), actor="t")
    body = {
        "id": "SO-L",
        "profile": "2-8C",
        "lots": [{"gtin": GTIN, "lot": "B1", "stability_budget_s": 86_400}],
        "devices": [{"id": "TRK-2", "from": T0.isoformat()}],
    }
    assert client.post("/api/v1/shipments", json=body, headers=h).status_code == 201
    key = db.execute("SELECT key FROM devices WHERE id = 'TRK-2'").fetchone()
    assert key is not None
    temps = np.full(240, 5.0)
    temps[100:150] = 11.0  # 50 minutes above the labelled range
    _readings(db, int(key[0]), temps)
    db.execute("UPDATE readings SET shipment_key = (SELECT key FROM shipments WHERE id = 'SO-L')")
    db.execute(
        "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, late)"
        " SELECT 1, %s, key, %s, %s, true FROM shipments WHERE id = 'SO-L'",
        (int(key[0]), T0, T0 + timedelta(hours=4)),
    )
    drain(db)
    budget_alerts = "SELECT count(*) FROM alerts WHERE kind = 'stability_budget'"
    assert db.execute(budget_alerts).fetchone() == (0,)
    url = f"/api/v1/products/{GTIN}/lots/B1"
    res = client.patch(url, json={"stability_budget_s": 600}, headers={**tokens["qa"], "If-Match": "*"})
    assert res.status_code == 200, res.text
    assert db.execute(budget_alerts).fetchone() == (1,)


def test_a_span_is_cut_into_windows_and_gaps() -> None:
    """The re-link's segments: every instant of the span in exactly one, windows keep their
    shipment, gaps link to none, open ends stay open."""
    h = [T0 + timedelta(hours=i) for i in range(10)]
    assert time_segments(h[0], h[9], [(h[2], h[4], 7), (h[4], h[6], 8)]) == (
        [h[0], h[2], h[4], h[6]],
        [h[2], h[4], h[6], h[9]],
        [None, 7, 8, None],
    )
    assert time_segments(h[3], None, [(h[1], h[5], 7), (h[8], None, 9)]) == (
        [h[3], h[5], h[8]],
        [h[5], h[8], None],
        [7, None, 9],
    )
    assert time_segments(h[3], h[4], []) == ([h[3]], [h[4]], [None])
    assert time_segments(h[0], h[2], [(h[1], None, 5)]) == ([h[0], h[1]], [h[1], h[2]], [None, 5])
