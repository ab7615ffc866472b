"""Late data can take an excursion back: an alert the re-evaluation no longer supports is
withdrawn (superseded by late data), audited, and whoever was told of it is told again."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from notify.outbox import OutboxOptions
from notify.service import NotificationService
from rules.runner import drain
from storage import alerts, notify_outbox
from tests.support.notify import (
    DISPATCHER,
    DRIVER,
    Clock,
    add_contact,
    add_shipment,
    notify_settings,
    open_alert,
    set_policy,
    settled,
    sms_to,
)
from tests.support.notify import stub as stub
from tests.support.twilio_stub import TwilioStub
from tests.support.waiting import wait_until
from tests.test_rules_runner import _alerts, _setup, _write


def _blips() -> np.ndarray:
    """Four hours at 5 °C with two six-minute warm blips (11 °C) 50 minutes apart."""
    c = np.full(240, 5.0)
    c[90:96] = 11.0
    c[140:146] = 11.0
    return c


def test_late_data_withdraws_an_alert_the_series_no_longer_supports(db: psycopg.Connection) -> None:
    dev, shp = _setup(db)
    trip = _blips()
    idx = np.arange(240)
    late = (idx >= 96) & (idx < 140)
    _write(db, dev, shp, idx[~late], trip)  # the logger's hour between the blips is missing
    drain(db)
    # Read as it arrived, 11 °C from minute 90 to 146 is one 56-minute excursion over H1.
    assert _alerts(db) == [("single", "H1", "resolved", 11.0)]
    (alert_id,) = [r[0] for r in db.execute("SELECT id FROM alerts").fetchall()]

    _write(db, dev, shp, idx[late], trip)  # back-filled: it was 5 °C in between
    stats = drain(db)
    assert stats.reevaluated == 1 and stats.alerts_withdrawn == 1 and stats.alerts_opened == 0
    assert _alerts(db) == [("single", "H1", "withdrawn", 11.0)]
    history = alerts.alert_history(db, org=1, alert_id=alert_id)
    assert [(h["action"], h["actor"], h["to"]) for h in history][-1] == ("withdraw", "rules", "withdrawn")
    assert "superseded by late data" in (history[-1]["comment"] or "")
    audit = db.execute(
        "SELECT action, actor, old_value, new_value FROM audit_trail"
        " WHERE entity = 'alert' AND entity_key = %s ORDER BY id",
        (str(alert_id),),
    ).fetchall()
    assert audit[-1][:2] == ("withdraw", "rules")
    assert audit[-1][2] == {"state": "resolved"} and audit[-1][3] == {"state": "withdrawn"}

    # Evaluating again changes nothing: the withdrawal is not repeated.
    _write(db, dev, shp, idx[late][:5], trip)
    again = drain(db)
    assert again.alerts_withdrawn == 0 and _alerts(db) == [("single", "H1", "withdrawn", 11.0)]


def test_a_closed_alert_keeps_its_signed_state_and_its_history_says_why(db: psycopg.Connection) -> None:
    dev, shp = _setup(db)
    trip = _blips()
    idx = np.arange(240)
    late = (idx >= 96) & (idx < 140)
    _write(db, dev, shp, idx[~late], trip)
    drain(db)
    (alert_id,) = [r[0] for r in db.execute("SELECT id FROM alerts").fetchall()]
    db.execute("UPDATE alerts SET state = 'closed', disposition = 'release' WHERE id = %s", (alert_id,))
    _write(db, dev, shp, idx[late], trip)
    assert drain(db).alerts_withdrawn == 0
    assert _alerts(db) == [("single", "H1", "closed", 11.0)]
    history = alerts.alert_history(db, org=1, alert_id=alert_id)
    assert history[-1]["action"] == "unsupported" and history[-1]["to"] is None


def _service(dsn: str, settings: Any, clock: Clock) -> NotificationService:
    options = OutboxOptions(poll_s=0.05, tick_s=3600.0, backoff_base_s=30.0, ambiguous_grace_s=60.0)
    return NotificationService(dsn=dsn, settings=settings, clock_ms=clock, options=options)


def test_whoever_was_told_hears_of_the_withdrawal_once(
    db_dsn: str, db: psycopg.Connection, stub: TwilioStub
) -> None:
    settings = notify_settings(db_dsn, stub)
    add_contact(db, "driver-1", ("driver",), phone=DRIVER)
    add_contact(db, "dispatch-1", ("dispatcher",), phone=DISPATCHER)
    # The driver is told at once (by text and by a call); the dispatcher only an hour later.
    set_policy(
        db,
        [
            {"delay_s": 0, "channels": ["sms", "voice"], "roles": ["driver"]},
            {"delay_s": 3600, "channels": ["sms"], "roles": ["dispatcher"]},
        ],
    )
    shipment = add_shipment(db)
    clock = Clock()
    with _service(db_dsn, settings, clock):
        alert_id = open_alert(db, shipment, "x:9:9:single:H1:0")
        wait_until(lambda: sms_to(stub, DRIVER) == 1, what="the driver's text")
        wait_until(lambda: any(r.kind == "Calls" for r in stub.requests), what="the driver's call")
        wait_until(lambda: settled(db_dsn, clock), what="the first tier to settle")
        with db.transaction():
            alerts.transition(
                db, org=1, alert_id=alert_id, action="withdraw", actor="rules",
                comment="superseded by late data",
            )
        wait_until(lambda: sms_to(stub, DRIVER) == 2, what="the withdrawal notice")
        wait_until(lambda: settled(db_dsn, clock), what="the outbox to settle")
    notice = [r for r in stub.requests if r.kind == "Messages" and r.field("To") == DRIVER][-1]
    assert (notice.field("Body") or "").startswith(f"WITHDRAWN alert {alert_id}")
    assert sms_to(stub, DISPATCHER) == 0  # never told, so not told of the withdrawal either
    assert sum(1 for r in stub.requests if r.kind == "Calls") == 1  # the call is answered by a text
    rows = notify_outbox.notifications_for_alert(db, org=1, alert_id=alert_id)
    withdrawals = [r for r in rows if r.kind == "withdrawal"]
    assert [(r.contact_id, r.channel) for r in withdrawals] == [("driver-1", "sms")]
    assert {r.state for r in rows if r.kind == "escalation" and r.contact_id == "dispatch-1"} <= {"cancelled"}
