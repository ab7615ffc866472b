"""Change control of alarm profiles over HTTP: a draft is not in force and cannot be assigned;
its author cannot approve it; a different QA person approves with an e-signature; a rollback is a
new version with the old content that needs approval too; the trail has old and new values."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from coldchain.domain import Severity
from coldchain.presets import get_preset
from coldchain.settings import Settings
from storage import alerts, audit
from storage.db import open_pool
from tests.support.identity import bearer, make_user, signature


@pytest.fixture
def client(db_dsn: str, db: psycopg.Connection) -> Iterator[TestClient]:
    make_user(db, "author@x.org", ["qa"], name="Ada Author")
    make_user(db, "second@x.org", ["qa"], name="Sam Second")
    make_user(db, "ops@x.org", ["logistics"])
    with (
        open_pool(db_dsn, max_size=4) as pool,
        TestClient(create_app(Settings(database_url=db_dsn), pool=pool)) as c,
    ):
        yield c


def _profile(threshold: float) -> dict[str, object]:
    body = get_preset("2-8C").to_dict()
    body["id"] = "vaccine-2-8"
    body["limits"][0]["threshold_c"] = threshold
    return body


def _high(client: TestClient, h: dict[str, str]) -> float:
    profile = client.get("/api/v1/profiles/vaccine-2-8", headers=h).json()
    return float(profile["limits"][0]["threshold_c"])


def _approve(client: TestClient, version: int, h: dict[str, str], **sig: str) -> object:
    body = {"comment": "reviewed against SOP-12", "signature": signature(**({"meaning": "approval"} | sig))}
    return client.post(f"/api/v1/profiles/vaccine-2-8/versions/{version}/approve", json=body, headers=h)


def test_drafts_approval_by_another_qa_person_and_rollback(
    client: TestClient, db: psycopg.Connection
) -> None:
    author, second, ops = (
        bearer(client, "author@x.org"),
        bearer(client, "second@x.org"),
        bearer(client, "ops@x.org"),
    )
    assert (
        client.post("/api/v1/profiles", json=_profile(8.0), headers=ops).status_code == 403
    )  # not logistics'
    res = client.post("/api/v1/profiles", json=_profile(8.0), headers=author)
    assert res.status_code == 201 and res.json()["state"] == "draft" and res.json()["version"] == 1
    # A draft is not in force and cannot be assigned to a shipment.
    assert client.get("/api/v1/profiles/vaccine-2-8", headers=ops).status_code == 404
    shipment = {"id": "SO-1", "profile": "vaccine-2-8"}
    assert client.post("/api/v1/shipments", json=shipment, headers=ops).status_code == 404
    # The author may not approve; the meaning must be approval; then a different QA person signs.
    res = _approve(client, 1, author)
    assert res.status_code == 403 and "author" in res.json()["message"]  # type: ignore[attr-defined]
    assert _approve(client, 1, second, meaning="review").status_code == 422  # type: ignore[attr-defined]
    res = _approve(client, 1, second)
    assert res.status_code == 200, res.text  # type: ignore[attr-defined]
    approved = res.json()  # type: ignore[attr-defined]
    assert (approved["state"], approved["approved_by"], approved["created_by"]) == (
        "approved",
        "second@x.org",
        "author@x.org",
    )
    [sig] = approved["signatures"]
    assert (sig["signer"], sig["meaning"], sig["status"]) == ("Sam Second", "approval", "valid")
    assert _approve(client, 1, second).status_code == 409  # type: ignore[attr-defined]
    assert client.post("/api/v1/shipments", json=shipment, headers=ops).status_code == 201
    assert _high(client, ops) == 8.0
    # An excursion keeps the body of the version it was judged under, whatever changes later.
    ship_key = db.execute("SELECT key FROM shipments WHERE id = 'SO-1'").fetchone()
    assert ship_key is not None
    with db.transaction():
        alert_id, _ = alerts.raise_alert(
            db,
            alerts.NewAlert(
                org_id=1,
                episode_key="frozen",
                kind="single",
                severity=Severity.ALARM,
                message="above 8 °C",
                shipment_key=ship_key[0],
                profile_id="vaccine-2-8",
                profile_version=1,
            ),
        )

    # A change (v2) stays a draft; v1 stays in force until v2 is approved.
    assert client.post("/api/v1/profiles", json=_profile(7.5), headers=author).json()["version"] == 2
    assert _high(client, ops) == 8.0
    assert _approve(client, 2, second).status_code == 200  # type: ignore[attr-defined]
    assert _high(client, ops) == 7.5

    # Rollback: a new version (v3) with v1's content, in force once approved.
    res = client.post(
        "/api/v1/profiles/vaccine-2-8/versions/1/rollback", json={"reason": "7.5 too tight"}, headers=second
    )
    assert res.status_code == 201 and (res.json()["version"], res.json()["based_on"]) == (3, 1)
    assert _high(client, ops) == 7.5
    assert _approve(client, 3, second).status_code == 403  # type: ignore[attr-defined]  # second wrote v3
    assert _approve(client, 3, author).status_code == 200  # type: ignore[attr-defined]
    assert _high(client, ops) == 8.0
    frozen = client.get(f"/api/v1/alerts/{alert_id}", headers=ops).json()["profile_body"]
    assert (frozen["version"], frozen["limits"][0]["threshold_c"]) == (1, 8.0)
    versions = client.get("/api/v1/profiles/vaccine-2-8/versions", headers=ops).json()
    assert [(v["version"], v["state"]) for v in versions] == [
        (1, "approved"),
        (2, "approved"),
        (3, "approved"),
    ]

    # The trail has every step with old and new values.
    trail = audit.trail(db, 1, "alarm_profile", "vaccine-2-8")
    assert [e["action"] for e in trail] == [
        "draft",
        "approve",
        "draft",
        "approve",
        "rollback_draft",
        "approve",
    ]
    assert trail[3]["old"]["limits"][0]["threshold_c"] == 8.0
    assert trail[3]["new"]["body"]["limits"][0]["threshold_c"] == 7.5
    assert trail[1]["reason"] == "reviewed against SOP-12"

    # An edit of an approved version behind the application's back breaks its signature.
    db.execute(
        "UPDATE alarm_profiles SET body = jsonb_set(body, '{limits,0,threshold_c}', '12') WHERE version = 1"
    )
    v1 = client.get("/api/v1/profiles/vaccine-2-8/versions", headers=ops).json()[0]
    assert v1["signatures"][0]["status"] == "broken"
