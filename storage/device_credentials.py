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
    mqtt_name: str  # the broker account's username
    password_hash: str


@dataclass(frozen=True, slots=True)
class CredentialChange:
    """What a change of a device's credential touched: the broker account, and whether the device
    held a credential before."""

    mqtt_name: str
    had_one: bool


def _lock_device(conn: psycopg.Connection, *, org: int, device_id: str) -> CredentialChange:
    """Lock the device row (one change of its credential at a time)."""
    row = conn.execute(
        "SELECT mqtt_name, mqtt_password_hash IS NOT NULL FROM devices WHERE org_id = %s AND id = %s"
        " FOR UPDATE",
        (org, device_id),
    ).fetchone()
    if row is None:
        raise NotFoundError("device", device_id)
    return CredentialChange(mqtt_name=str(row[0]), had_one=bool(row[1]))


def issue(
    conn: psycopg.Connection, *, org: int, device_id: str, password_hash: str, actor: str
) -> CredentialChange:
    """Record a new credential (replacing any earlier one)."""
    change = _lock_device(conn, org=org, device_id=device_id)
    replaced = change.had_one
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
    return change


def revoke(conn: psycopg.Connection, *, org: int, device_id: str, actor: str) -> CredentialChange:
    """Forget the device's credential (nothing is recorded when it had none)."""
    change = _lock_device(conn, org=org, device_id=device_id)
    if not change.had_one:
        return change
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
    return change


def active(conn: psycopg.Connection) -> list[DeviceCredential]:
    """Every device of every organization that holds a credential: what the broker starts with."""
    with conn.cursor(row_factory=class_row(DeviceCredential)) as cur:
        return cur.execute(
            "SELECT mqtt_name, mqtt_password_hash AS password_hash FROM devices"
            " WHERE mqtt_password_hash IS NOT NULL ORDER BY mqtt_name"
        ).fetchall()
