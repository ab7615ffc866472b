"""Device conditions become alerts: a sequence gap (lost data) and a low battery, each once per
episode and resolved when the condition ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from coldchain.domain import Device, DeviceAssignment, Shipment
from coldchain.presets import get_preset
from rules.device_health import check_batteries, check_data_loss
from storage import profiles, registry


def _on_shipment(db: psycopg.Connection, profile: str = "2-8C") -> int:
    registry.create_device(db, org=1, device=Device(id="TRK-1"), actor="t")
    start = datetime.now(UTC) - timedelta(hours=1)
    registry.create_shipment(
        db,
        org=1,
        profile_version=1,
        actor="t",
        shipment=Shipment(id="SO-1", profile=profile, devices=(DeviceAssignment("TRK-1", start),)),
    )
    row = db.execute("SELECT key FROM devices WHERE id = 'TRK-1'").fetchone()
    assert row is not None
    return int(row[0])


def _alerts(db: psycopg.Connection) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in db.execute("SELECT kind, state FROM alerts ORDER BY id").fetchall()]


def test_sequence_gap_alerts_once_and_resolves_when_filled(db: psycopg.Connection) -> None:
    key = _on_shipment(db)
    db.execute(
        "INSERT INTO data_loss_events (org_id, device_key, from_seq, to_seq, missing)"
        " VALUES (1, %s, 5, 7, 3)",
        (key,),
    )
    assert check_data_loss(db) == (1, 0)
    assert check_data_loss(db) == (0, 0)
    assert _alerts(db) == [("data_loss", "open")]
    message = db.execute("SELECT message, shipment_key IS NOT NULL FROM alerts").fetchone()
    assert message is not None and "batches 5-7" in message[0] and message[1]
    db.execute("UPDATE data_loss_events SET recovered = 3, resolved_at = now()")
    assert check_data_loss(db) == (0, 1)
    assert _alerts(db) == [("data_loss", "resolved")]


def test_low_battery_alerts_under_the_profile_threshold(db: psycopg.Connection) -> None:
    base = get_preset("2-8C").to_dict()
    custom = profiles.save(
        db,
        org=1,
        actor="t",
        profile=type(get_preset("2-8C")).from_dict({**base, "id": "2-8C-battery", "low_battery_pct": 20.0}),
    )
    key = _on_shipment(db, custom.id)
    now = 1_800_000_000_000
    db.execute("""UPDATE devices SET status = '{"state": "online", "battery": 0.5}' WHERE key = %s""", (key,))
    assert check_batteries(db, now_ms=now) == (0, 0)
    db.execute(
        """UPDATE devices SET status = '{"state": "online", "battery": 0.12}' WHERE key = %s""", (key,)
    )
    assert check_batteries(db, now_ms=now) == (1, 0)
    assert check_batteries(db, now_ms=now + 60_000) == (0, 0)  # one alert per episode
    db.execute(
        """UPDATE devices SET status = '{"state": "online", "battery": 0.22}' WHERE key = %s""", (key,)
    )
    assert check_batteries(db, now_ms=now + 120_000) == (0, 0)  # inside the recovery margin
    db.execute("""UPDATE devices SET status = '{"state": "online", "battery": 0.9}' WHERE key = %s""", (key,))
    assert check_batteries(db, now_ms=now + 180_000) == (0, 1)
    assert _alerts(db) == [("low_battery", "resolved")]
