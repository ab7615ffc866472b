"""Device conditions that are alarms too: silence (a logger on a shipment stops reporting), lost
data (a gap in the batch sequence) and a low battery. Checked on a schedule from what ingest
recorded; each condition is one alert per episode, resolved by the rules when it ends. The clock
is a parameter so tests control it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import psycopg

from coldchain.domain import AlertState, Severity
from storage import alerts, batches, device_state, profiles
from storage.alerts import NewAlert

log = logging.getLogger(__name__)
BATTERY_RECOVERY_MARGIN_PCT = 5.0
DEFAULT_NO_DATA_INTERVALS = 5


def _resolve(conn: psycopg.Connection, org: int, alert_id: int, why: str) -> None:
    alerts.transition(conn, org=org, alert_id=alert_id, action="resolve", actor="rules", comment=why)


def check_data_loss(conn: psycopg.Connection) -> tuple[int, int]:
    """Raise an alert per sequence gap and resolve it when the missing batches arrive."""
    raised = resolved = 0
    with conn.transaction():
        for gap in batches.data_loss_to_alert(conn):
            key = f"loss:{gap.event_id}"
            if gap.resolved:
                found = alerts.alert_of_episode(conn, org_id=gap.org_id, episode_key=key)
                if found and found[1] in (AlertState.OPEN, AlertState.ACKNOWLEDGED):
                    _resolve(conn, gap.org_id, found[0], "the missing batches arrived")
                    resolved += 1
                continue
            what = (
                f"batch {gap.from_seq}"
                if gap.from_seq == gap.to_seq
                else f"batches {gap.from_seq}-{gap.to_seq}"
            )
            _, opened = alerts.raise_alert(
                conn,
                NewAlert(
                    org_id=gap.org_id,
                    episode_key=key,
                    kind="data_loss",
                    severity=Severity.WARNING,
                    message=f"{gap.device_id}: {what} never arrived ({gap.missing} missing)",
                    device_key=gap.device_key,
                    shipment_key=gap.shipment_key,
                    started_at=datetime.now(UTC),
                ),
            )
            raised += int(opened)
    return raised, resolved


def check_batteries(conn: psycopg.Connection, *, now_ms: int) -> tuple[int, int]:
    """Raise a low-battery alert under the profile's threshold; resolve it once clearly above."""
    raised = resolved = 0
    with conn.transaction():
        for battery in device_state.batteries_on_shipments(conn):
            profile = profiles.resolve_version(
                conn, org=battery.org_id, profile_id=battery.profile_id, version=battery.profile_version
            )
            if profile.low_battery_pct is None:
                continue
            prefix = f"battery:{battery.device_key}:"
            current = alerts.open_episode_alerts(conn, org_id=battery.org_id, prefix=prefix)
            if battery.battery_pct < profile.low_battery_pct and not current:
                _, opened = alerts.raise_alert(
                    conn,
                    NewAlert(
                        org_id=battery.org_id,
                        episode_key=f"{prefix}{now_ms}",
                        kind="low_battery",
                        severity=Severity.WARNING,
                        message=f"{battery.device_id}: battery at {battery.battery_pct:.0f} %"
                        f" (below {profile.low_battery_pct:g} %)",
                        device_key=battery.device_key,
                        shipment_key=battery.shipment_key,
                        profile_id=profile.id,
                        profile_version=profile.version,
                        started_at=datetime.fromtimestamp(now_ms / 1000, tz=UTC),
                    ),
                )
                raised += int(opened)
            elif battery.battery_pct >= profile.low_battery_pct + BATTERY_RECOVERY_MARGIN_PCT:
                for alert_id, _ in current.values():
                    _resolve(conn, battery.org_id, alert_id, f"battery back at {battery.battery_pct:.0f} %")
                    resolved += 1
    return raised, resolved


def check_silence(conn: psycopg.Connection, *, now_ms: int) -> tuple[int, int]:
    """Raise no-data alerts for silent loggers and resolve those whose data resumed; (raised, cleared)."""
    raised = cleared = 0
    with conn.transaction():
        for device in device_state.devices_on_shipments(conn):
            profile = profiles.resolve_version(
                conn, org=device.org_id, profile_id=device.profile_id, version=device.profile_version
            )
            intervals = profile.no_data_intervals or DEFAULT_NO_DATA_INTERVALS
            allowed_ms = device.interval_s * intervals * 1000
            last = device.last_seen_ms
            prefix = f"nodata:{device.shipment_key}:{device.device_key}:"
            open_alerts = alerts.open_episode_alerts(conn, org_id=device.org_id, prefix=prefix)
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
                    _resolve(conn, device.org_id, alert_id, "data resumed")
                    cleared += 1
    if raised or cleared:
        log.info("silence check: %d no-data alerts raised, %d cleared", raised, cleared)
    return raised, cleared
