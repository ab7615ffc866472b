"""The configuration the platform wants each logger to run, and its outbox to the broker.

A change writes the new version, its audit row and a `device_config` NOTIFY in the caller's
transaction; the config publisher (api/config_publisher.py) sends every version the broker does
not hold yet (`published_version < version`) as the retained message, and marks it after the
PUBACK. What the device applied is its own retained status (`devices.status->applied_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coldchain.errors import NotFoundError
from coldchain.wire import DeviceConfig
from storage import profiles, registry
from storage.audit import record
from storage.listen import Wakeup, wake
from storage.rows import fetch_all, fetch_one


@dataclass(frozen=True, slots=True)
class DesiredConfig:
    """A device's desired config (version and body), how far it got, and what the device applied."""

    device_id: str
    version: int
    body: dict[str, Any]
    published_version: int
    published_at: datetime | None
    publish_attempts: int
    last_error: str | None
    changed_by: str
    changed_at: datetime
    applied_version: int | None


@dataclass(frozen=True, slots=True)
class PendingConfig:
    """A version the broker does not hold yet: what the publisher sends."""

    device_key: int
    mqtt_name: str  # the topic level of its config
    version: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CurrentAssignment:
    """The shipment a device rides with now (or next): its id and the profile version it keeps."""

    shipment_id: str
    profile_id: str
    profile_version: int


def _device_key(conn: psycopg.Connection, *, org: int, device_id: str) -> int:
    row = conn.execute(
        "SELECT key FROM devices WHERE org_id = %s AND id = %s FOR NO KEY UPDATE", (org, device_id)
    ).fetchone()
    if row is None:
        raise NotFoundError("device", device_id)
    return int(row[0])


def current_assignment(conn: psycopg.Connection, *, org: int, device_id: str) -> CurrentAssignment | None:
    """The device's assignment that has not ended, earliest first (the one it rides now)."""
    return fetch_one(
        conn,
        CurrentAssignment,
        "SELECT s.id AS shipment_id, s.profile_id, s.profile_version"
        " FROM device_assignments a JOIN devices d ON d.key = a.device_key"
        " JOIN shipments s ON s.key = a.shipment_key"
        " WHERE d.org_id = %s AND d.id = %s AND (upper_inf(a.during) OR upper(a.during) > now())"
        " ORDER BY lower(a.during) LIMIT 1",
        (org, device_id),
    )


def desire(
    conn: psycopg.Connection, *, org: int, device_id: str, body: dict[str, Any], actor: str, reason: str
) -> DesiredConfig:
    """Store `body` as the device's next config version (audited), and wake the publisher.

    Run inside the caller's transaction: the row, its audit entry and the NOTIFY commit together.
    """
    key = _device_key(conn, org=org, device_id=device_id)
    old = conn.execute(
        "SELECT version, body FROM device_configs WHERE device_key = %s FOR UPDATE", (key,)
    ).fetchone()
    version = 1 if old is None else int(old[0]) + 1
    conn.execute(
        "INSERT INTO device_configs (device_key, org_id, version, body, changed_by)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (device_key) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body,"
        " changed_by = EXCLUDED.changed_by, changed_at = now(), publish_attempts = 0, last_error = NULL",
        (key, org, version, Jsonb(body), actor),
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="configure",
        entity="device_config",
        key=device_id,
        old=None if old is None else {"version": int(old[0]), **old[1]},
        new={"version": version, **body},
        reason=reason,
    )
    wake(conn, Wakeup.DEVICE_CONFIG, device_id)
    found = get(conn, org=org, device_id=device_id)
    assert found is not None
    return found


def get(conn: psycopg.Connection, *, org: int, device_id: str) -> DesiredConfig | None:
    """The device's desired config with its delivery and the version it reports applied."""
    return fetch_one(
        conn,
        DesiredConfig,
        "SELECT d.id AS device_id, c.version, c.body, c.published_version, c.published_at,"
        " c.publish_attempts, c.last_error, c.changed_by, c.changed_at,"
        " CASE WHEN jsonb_typeof(d.status->'applied_config') = 'number'"
        "  THEN (d.status->>'applied_config')::integer END AS applied_version"
        " FROM device_configs c JOIN devices d ON d.key = c.device_key"
        " WHERE d.org_id = %s AND d.id = %s",
        (org, device_id),
    )


def applied_version(conn: psycopg.Connection, *, org: int, device_id: str) -> int | None:
    """The config version the device last reported applied (None: never reported one)."""
    row = conn.execute(
        "SELECT CASE WHEN jsonb_typeof(status->'applied_config') = 'number'"
        " THEN (status->>'applied_config')::integer END FROM devices WHERE org_id = %s AND id = %s",
        (org, device_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("device", device_id)
    return None if row[0] is None else int(row[0])


def pending(conn: psycopg.Connection, *, limit: int = 500) -> list[PendingConfig]:
    """Versions the broker does not hold yet, of every organization (the publisher is a service)."""
    return fetch_all(
        conn,
        PendingConfig,
        "SELECT c.device_key, d.mqtt_name, c.version, c.body"
        " FROM device_configs c JOIN devices d ON d.key = c.device_key"
        " WHERE c.published_version < c.version ORDER BY c.changed_at, c.device_key LIMIT %s",
        (limit,),
    )


def mark_published(conn: psycopg.Connection, *, device_key: int, version: int) -> None:
    """The broker acknowledged `version` (a newer one written meanwhile stays pending)."""
    conn.execute(
        "UPDATE device_configs SET published_version = GREATEST(published_version, %s),"
        " published_at = now(), last_error = NULL WHERE device_key = %s AND version >= %s",
        (version, device_key, version),
    )


def mark_failed(conn: psycopg.Connection, *, device_key: int, error: str) -> None:
    """A publish that did not get its PUBACK: counted, and retried on the next wake-up or poll."""
    conn.execute(
        "UPDATE device_configs SET publish_attempts = publish_attempts + 1, last_error = %s"
        " WHERE device_key = %s",
        (error[:500], device_key),
    )


TIMING_KEYS = ("interval_s", "batch_size", "batch_age_s")


def follow_assignment(
    conn: psycopg.Connection,
    *,
    org: int,
    device_id: str,
    actor: str,
    reason: str,
    timing: dict[str, int] | None = None,
) -> DesiredConfig:
    """Write the device's next config version in the caller's transaction: the shipment it rides
    with now (or next) and that shipment's local alarm, with `timing` (None: the interval and
    batching of the last version, or the registered interval and the defaults). Every way a
    logger is assigned (the API, a bulk import, a corrected window) ends here."""
    if timing is None:
        last = get(conn, org=org, device_id=device_id)
        if last is not None:
            timing = {k: int(last.body[k]) for k in TIMING_KEYS if k in last.body}
        else:
            timing = {"interval_s": registry.get_device(conn, org=org, device_id=device_id).device.interval_s}
    assignment = current_assignment(conn, org=org, device_id=device_id)
    profile = None
    if assignment is not None:
        profile = profiles.resolve_version(
            conn, org=org, profile_id=assignment.profile_id, version=assignment.profile_version
        ).edge_alarm()
    config = DeviceConfig(
        version=1,
        shipment=None if assignment is None else assignment.shipment_id,
        profile=profile,
        **{k: v for k, v in timing.items() if k in TIMING_KEYS},
    )
    body = {k: getattr(config, k) for k in DeviceConfig.__slots__ if k != "version"}
    return desire(conn, org=org, device_id=device_id, body=body, actor=actor, reason=reason)


def follow_assignments(
    conn: psycopg.Connection, *, org: int, device_ids: list[str], actor: str, reason: str
) -> int:
    """`follow_assignment` for many devices at once (a bulk import of assignments): a fixed number
    of statements whatever their number, each device's version and audit row as one at a time
    would write them, one wake-up for the publisher. Returns how many versions were written."""
    if not device_ids:
        return 0
    rows = conn.execute(
        "SELECT d.key, d.id, d.interval_s, c.version, c.body, ca.shipment_id, ca.profile_id,"
        " ca.profile_version FROM devices d"
        " LEFT JOIN device_configs c ON c.device_key = d.key"
        " LEFT JOIN LATERAL (SELECT s.id AS shipment_id, s.profile_id, s.profile_version"
        "  FROM device_assignments a JOIN shipments s ON s.key = a.shipment_key"
        "  WHERE a.device_key = d.key AND (upper_inf(a.during) OR upper(a.during) > now())"
        "  ORDER BY lower(a.during) LIMIT 1) ca ON true"
        " WHERE d.org_id = %s AND d.id = ANY(%s) ORDER BY d.key FOR NO KEY UPDATE OF d",
        (org, device_ids),
    ).fetchall()
    alarms: dict[tuple[str, int], dict[str, Any]] = {}
    keys, versions, bodies, ids, olds = [], [], [], [], []
    for key, device_id, interval_s, version, body, shipment_id, profile_id, profile_version in rows:
        timing = (
            {k: int(body[k]) for k in TIMING_KEYS if k in body}
            if body is not None
            else {"interval_s": int(interval_s)}
        )
        profile = None
        if shipment_id is not None:
            ref = (str(profile_id), int(profile_version))
            if ref not in alarms:
                alarms[ref] = profiles.resolve_version(
                    conn, org=org, profile_id=ref[0], version=ref[1]
                ).edge_alarm()
            profile = alarms[ref]
        config = DeviceConfig(version=1, shipment=shipment_id, profile=profile, **timing)
        new = {k: getattr(config, k) for k in DeviceConfig.__slots__ if k != "version"}
        next_version = 1 if version is None else int(version) + 1
        keys.append(int(key))
        versions.append(next_version)
        bodies.append(Jsonb(new))
        ids.append(str(device_id))
        olds.append(None if version is None else Jsonb({"version": int(version), **body}))
    conn.execute(
        "INSERT INTO device_configs (device_key, org_id, version, body, changed_by)"
        " SELECT k, %s, v, b, %s FROM unnest(%s::int4[], %s::int4[], %s::jsonb[]) AS x(k, v, b)"
        " ON CONFLICT (device_key) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body,"
        " changed_by = EXCLUDED.changed_by, changed_at = now(), publish_attempts = 0, last_error = NULL",
        (org, actor, keys, versions, bodies),
    )
    conn.execute(
        "SELECT audit_append(%s::smallint, %s, 'configure', 'device_config', i, o,"
        " jsonb_build_object('version', v) || b, %s)"
        " FROM unnest(%s::text[], %s::jsonb[], %s::int4[], %s::jsonb[]) WITH ORDINALITY AS x(i, o, v, b, n)"
        " ORDER BY n",
        (org, actor, reason, ids, olds, versions, bodies),
    )
    wake(conn, Wakeup.DEVICE_CONFIG, "")
    return len(keys)
