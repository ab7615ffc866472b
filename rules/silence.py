"""Silence is an alarm: a logger on a shipment that stops reporting raises a no-data alert,
cleared when its data resumes. Run on a schedule; the clock is a parameter so tests control it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import psycopg

from coldchain.domain import Severity
from storage import alerts, profiles, rules_store
from storage.alerts import NewAlert

log = logging.getLogger(__name__)
DEFAULT_NO_DATA_INTERVALS = 5


def check_silence(conn: psycopg.Connection, *, now_ms: int) -> tuple[int, int]:
    """Raise no-data alerts for silent loggers and resolve those whose data resumed; (raised, cleared)."""
    raised = cleared = 0
    with conn.transaction():
        for device, profile_id, version in rules_store.devices_on_shipments(conn):
            profile = profiles.resolve(conn, org=device.org_id, profile_id=profile_id, version=version)
            intervals = profile.no_data_intervals or DEFAULT_NO_DATA_INTERVALS
            allowed_ms = device.interval_s * intervals * 1000
            last = device.last_seen_ms
            prefix = f"nodata:{device.shipment_key}:{device.device_key}:"
            open_alerts = rules_store.open_episode_alerts(conn, org_id=device.org_id, prefix=prefix)
            if last is not None and now_ms - last > allowed_ms:
                _, opened = alerts.raise_alert(
                    conn,
                    NewAlert(
                        org_id=device.org_id,
                        episode_key=f"{prefix}{last}",
                        kind="no_data",
                        severity=Severity.ALARM,
                        message=(
                            f"{device.device_id}: no data for more than {intervals} intervals"
                            f" ({allowed_ms // 60000} min) since"
                            f" {datetime.fromtimestamp(last / 1000, tz=UTC):%Y-%m-%d %H:%M UTC}"
                        ),
                        device_key=device.device_key,
                        shipment_key=device.shipment_key,
                        profile_id=profile.id,
                        profile_version=profile.version,
                        started_at=datetime.fromtimestamp(last / 1000, tz=UTC),
                    ),
                )
                raised += int(opened)
            for key, (alert_id, _state) in open_alerts.items():
                silent_since = int(key.rsplit(":", 1)[1])
                if last is not None and last > silent_since:
                    alerts.transition(
                        conn,
                        org=device.org_id,
                        alert_id=alert_id,
                        action="resolve",
                        actor="rules",
                        comment="data resumed",
                    )
                    cleared += 1
    if raised or cleared:
        log.info("silence check: %d no-data alerts raised, %d cleared", raised, cleared)
    return raised, cleared
