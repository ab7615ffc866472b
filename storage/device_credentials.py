"""Each device's MQTT credential as the platform records it: a `$7$` PBKDF2-SHA512 hash on the
device row (never the password), issued and revoked with an audit row in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

from coldchain.errors import NotFoundError
from storage.audit import record


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    device_id: str
    password_hash: str


def _lock_device(conn: psycopg.Connection, *, org: int, device_id: str) -> bool:
    """Lock the device row (one change of its credential at a time); True when it has one now."""
    row = conn.execute(
        "SELECT mqtt_password_hash IS NOT NULL FROM devices WHERE org_id = %s AND id = %s FOR UPDATE",
        (org, device_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("device", device_id)
    return bool(row[0])


def issue(conn: psycopg.Connection, *, org: int, device_id: str, password_hash: str, actor: str) -> bool:
    """Record a new credential (replacing any earlier one). True when it replaced one."""
    replaced = _lock_device(conn, org=org, device_id=device_id)
    conn.execute(
        "UPDATE devices SET mqtt_password_hash = %s WHERE org_id = %s AND id = %s",
        (password_hash, org, device_id),
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="rotate credentials" if replaced else "issue credentials",
        entity="device",
        key=device_id,
        old={"mqtt_credentials": replaced},
        new={"mqtt_credentials": True},
    )
    return replaced


def revoke(conn: psycopg.Connection, *, org: int, device_id: str, actor: str) -> bool:
    """Forget the device's credential. False when it had none (nothing recorded then)."""
    if not _lock_device(conn, org=org, device_id=device_id):
        return False
    conn.execute(
        "UPDATE devices SET mqtt_password_hash = NULL WHERE org_id = %s AND id = %s", (org, device_id)
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="revoke credentials",
        entity="device",
        key=device_id,
        old={"mqtt_credentials": True},
        new={"mqtt_credentials": False},
    )
    return True


def active(conn: psycopg.Connection) -> list[DeviceCredential]:
    """Every device of every organization that holds a credential: what the broker starts with."""
    with conn.cursor(row_factory=class_row(DeviceCredential)) as cur:
        return cur.execute(
            "SELECT id AS device_id, mqtt_password_hash AS password_hash FROM devices"
            " WHERE mqtt_password_hash IS NOT NULL ORDER BY id"
        ).fetchall()
