"""A warning alert when a logger's calibration comes due (30 days before, EU GDP wants yearly
calibration), one per certificate; resolved once a newer certificate is recorded."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg

from coldchain.calibration import DUE_SOON_DAYS
from coldchain.domain import Severity
from storage import alerts, calibrations
from storage.alerts import NewAlert

__all__ = ["check_calibrations", "episode_key"]


def episode_key(device_key: int, due_on: date) -> str:
    return f"calibration:{device_key}:{due_on.isoformat()}"


def check_calibrations(conn: psycopg.Connection, *, today: date) -> tuple[int, int]:
    """Raise due-soon alerts and resolve those a new certificate answered; (raised, resolved)."""
    raised = resolved = 0
    with conn.transaction():
        due = calibrations.coming_due(conn, today=today, within_days=DUE_SOON_DAYS)
        current = {(d.org_id, episode_key(d.device_key, d.due_on)) for d in due}
        for d in due:
            days = (d.due_on - today).days
            when = f"in {days} days" if days > 0 else "today" if days == 0 else f"{-days} days ago"
            _, opened = alerts.raise_alert(
                conn,
                NewAlert(
                    org_id=d.org_id, episode_key=episode_key(d.device_key, d.due_on),
                    kind="calibration_due", severity=Severity.WARNING,
                    message=f"{d.device_id}: calibration due {when} ({d.due_on.isoformat()}, "
                            f"certificate {d.certificate_number})",
                    device_key=d.device_key, started_at=datetime.now(UTC),
                ),
            )
            raised += int(opened)
        for alert_id, org, key in calibrations.open_calibration_alerts(conn):
            if (org, key) not in current:
                alerts.transition(
                    conn, org=org, alert_id=alert_id, action="resolve", actor="rules",
                    comment="a newer calibration certificate was recorded",
                )
                resolved += 1
    return raised, resolved
