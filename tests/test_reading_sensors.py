"""Door, light, shock and position on the wire: both forms carry them, ingest stores them in the
readings (flags and nullable columns, on either engine), the API returns them, and a bad value
is a dead letter. A batch without them is stored as before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import psycopg
import pytest

from coldchain.access import Role
from coldchain.errors import DecodeError
from coldchain.settings import Settings
from coldchain.wire import Topics, decode_batch, encode_binary, encode_binary_columns, encode_json
from ingest import IngestService
from storage import auth
from tests.support.api import api_client
from tests.support.ingest import GTIN, Publisher, make_batch, register, scalar
from tests.support.waiting import wait_until

pytestmark = pytest.mark.both_engines

EXTRAS = (
    {"door": True, "lat": 53.3498, "lon": -6.2603},
    {"light": True, "shock_g": 4.5, "lat": 53.35, "lon": -6.26},
    None,
    {"battery": 0.8},
)


@pytest.fixture
def service(db_dsn: str, mqtt_url: str, topics: Topics) -> Iterator[IngestService]:
    svc = IngestService(
        dsn=db_dsn, mqtt_url=mqtt_url, topics=topics, settings=Settings(ingest_group_max_wait_ms=20),
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
    )
    svc.start()
    assert svc.wait_ready(30)
    yield svc
    svc.stop()


def test_both_forms_carry_sensor_fields_and_old_payloads_still_decode() -> None:
    batch = replace(make_batch("D1", 1, n=4), extras=EXTRAS)
    for payload in (encode_binary(batch), encode_json(batch)):
        back = decode_batch(payload)
        assert back.extras is not None
        assert [e and e.get("lat") for e in back.extras] == [53.3498, 53.35, None, None]
        assert back.extras[1] == {"light": True, "shock_g": 4.5, "lat": 53.35, "lon": -6.26}
    # an agent that sends no extras: no extras block, the same bytes as before positions existed
    plain = encode_binary_columns(device="D1", seq=1, sent_ms=0, t_ms=[0, 1], celsius=[4.0, 5.0])
    assert plain[4] == 0 and decode_batch(plain).extras is None
    for bad in ({"lat": 91.0, "lon": 0.0}, {"lat": 10.0}, {"shock_g": -1.0}, {"lat": "53", "lon": 1.0}):
        with pytest.raises(DecodeError) as err:
            decode_batch(encode_binary(replace(make_batch("D1", 1, n=1), extras=(bad,))))
        assert err.value.reason == "bad_value"


def test_ingest_stores_positions_shock_door_and_light_and_the_api_returns_them(
    db_dsn: str, db: psycopg.Connection, service: IngestService, mqtt_url: str, topics: Topics
) -> None:
    register(db, ["GPS-1", "GPS-2"])
    with Publisher(mqtt_url) as pub:
        first = replace(make_batch("GPS-1", 1, n=4), extras=EXTRAS)
        pub.publish(topics.readings("GPS-1"), encode_binary(first))
        pub.publish(topics.readings("GPS-2"), encode_json(make_batch("GPS-2", 1, n=3)))  # no extras
        bad = replace(make_batch("GPS-1", 2, n=1), extras=({"lat": 200.0, "lon": 0.0},))
        pub.publish(topics.readings("GPS-1"), encode_json(bad))
        assert pub.wait_all_acked(3)
    assert wait_until(
        lambda: scalar(db, "SELECT count(*) FROM readings") == 7
        and scalar(db, "SELECT count(*) FROM dead_letters") == 1
    )
    rows = db.execute(
        "SELECT r.lat, r.lon, r.shock_g, r.flags & 12 FROM readings r"
        " JOIN devices d ON d.key = r.device_key WHERE d.id = 'GPS-1' ORDER BY r.t"
    ).fetchall()
    assert rows[0][:2] == (53.3498, -6.2603) and rows[0][3] == 4  # door open
    assert rows[1][2] == pytest.approx(4.5) and rows[1][3] == 8  # light
    assert rows[2] == (None, None, None, 0) and rows[3] == (None, None, None, 0)
    assert scalar(db, "SELECT count(*) FROM readings WHERE lat IS NOT NULL OR shock_g IS NOT NULL") == 2
    assert db.execute("SELECT reason FROM dead_letters").fetchone() == ("bad_value",)
    token = auth.create_token(db, org=1, name="viewer", role=Role.VIEWER, actor="test")
    db.commit()
    with api_client(db_dsn, token=token) as client:
        res = client.get(f"/api/v1/lots/{GTIN}/A123/readings")
        assert res.status_code == 200, res.text
        got = [r for r in res.json()["readings"] if r["device"] == "GPS-1"]
    first_out = (got[0]["lat"], got[0]["lon"], got[0]["door"], got[0]["light"])
    assert first_out == (53.3498, -6.2603, True, False)
    assert got[1]["light"] is True and got[1]["shock_g"] == 4.5
    assert got[2]["lat"] is None and got[2]["shock_g"] is None
    assert np.isclose(got[0]["c"], 5.0)
