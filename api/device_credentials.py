"""Issuing and revoking a device's broker credential, for the API route and `coldchain devices`:
the database record and the broker's account change in one step (the record's transaction
commits only after the broker has taken the change, so a broker that is down changes nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from coldchain import broker_accounts
from coldchain.errors import BrokerUnavailableError
from coldchain.settings import Settings
from coldchain.wire import Topics
from storage import device_credentials


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    device_id: str
    username: str  # the device's MQTT name
    password: str = field(repr=False)
    replaced: bool
    topics: tuple[str, ...]


def broker_control(settings: Settings) -> broker_accounts.BrokerControl:
    if settings.mqtt_control_url is None:
        raise BrokerUnavailableError(
            "no broker control account is configured (MQTT_CONTROL_URL): credentials cannot be changed"
        )
    return broker_accounts.BrokerControl(
        settings.mqtt_control_url.get_secret_value(), Topics(settings.topic_prefix)
    )


def issue(
    conn: psycopg.Connection, settings: Settings, *, org: int, device_id: str, actor: str
) -> IssuedCredential:
    """A new password for the device (an earlier one is revoked and its session cut)."""
    password = broker_accounts.new_secret()
    with conn.transaction():
        change = device_credentials.issue(
            conn,
            org=org,
            device_id=device_id,
            password_hash=broker_accounts.hash_password(password),
            actor=actor,
        )
        broker_control(settings).grant_device(change.mqtt_name, password)  # raising rolls the record back
    topics = Topics(settings.topic_prefix)
    return IssuedCredential(
        device_id=device_id,
        username=change.mqtt_name,
        password=password,
        replaced=change.had_one,
        topics=(topics.readings(change.mqtt_name), topics.status(change.mqtt_name)),
    )


def revoke(conn: psycopg.Connection, settings: Settings, *, org: int, device_id: str, actor: str) -> bool:
    """Revoke the device's password; True when it had one. The broker is told in any case, so an
    account the database no longer knows of cannot linger there."""
    with conn.transaction():
        change = device_credentials.revoke(conn, org=org, device_id=device_id, actor=actor)
        broker_control(settings).revoke_device(change.mqtt_name)
    return change.had_one
