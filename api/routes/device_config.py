"""A logger's configuration from the platform: set it, see desired against applied.

The config (sampling interval, batch size and age, the shipment it rides with and the local
alarm from that shipment's profile) is stored as a new version and published by the config
publisher as the device's retained MQTT message; the device reports the version it applied in
its own retained status. Assigning a device to a shipment writes a new version too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
from annotated_types import Interval
from fastapi import APIRouter, Path
from pydantic import BeforeValidator, Field

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.schemas import DEVICE_ID_PATTERN, IntervalSeconds, _In, _Out, whole_number
from coldchain.access import Permission
from coldchain.wire import MAX_READINGS, DeviceConfig
from storage import device_config, registry

router = APIRouter()

DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["TRK-0042-L1"])]
BatchSize = Annotated[int, Interval(ge=1, le=MAX_READINGS), BeforeValidator(whole_number)]
_DEFAULTS = DeviceConfig()


class DeviceConfigIn(_In):
    """What the platform asks of the logger; the shipment and local alarm follow its assignment."""

    interval_s: IntervalSeconds = Field(default=_DEFAULTS.interval_s, description="seconds between readings")
    batch_size: BatchSize = Field(default=_DEFAULTS.batch_size, description="readings per MQTT batch")
    batch_age_s: IntervalSeconds = Field(
        default=_DEFAULTS.batch_age_s, description="a batch is sent when its oldest reading is this old"
    )


class DesiredConfigOut(_Out):
    interval_s: int
    batch_size: int
    batch_age_s: int
    shipment: str | None = Field(description="the shipment the device rides with now or next")
    profile: dict[str, Any] | None = Field(
        description="the local alarm from that shipment's profile (single-event limits)"
    )


class DeviceConfigOut(_Out):
    """Desired against applied: `state` is `applied` once the device reports the desired version."""

    device: str
    version: int = Field(description="the desired version (0: the platform never set one)")
    desired: DesiredConfigOut | None
    published_version: int = Field(description="the newest version the broker holds, retained")
    published_at: datetime | None
    applied_version: int | None = Field(description="the version the device reports it applied")
    state: Literal["none", "pending", "published", "applied"]
    publish_attempts: int = Field(description="failed publishes of the desired version so far")
    last_error: str | None
    changed_by: str | None
    changed_at: datetime | None


def _out(conn: psycopg.Connection, org: int, device_id: str) -> DeviceConfigOut:
    rec = device_config.get(conn, org=org, device_id=device_id)
    if rec is None:
        applied = device_config.applied_version(conn, org=org, device_id=device_id)
        return DeviceConfigOut(
            device=device_id, version=0, desired=None, published_version=0, published_at=None,
            applied_version=applied, state="none", publish_attempts=0, last_error=None,
            changed_by=None, changed_at=None,
        )
    state: Literal["pending", "published", "applied"] = "pending"
    if rec.applied_version is not None and rec.applied_version >= rec.version:
        state = "applied"
    elif rec.published_version >= rec.version:
        state = "published"
    return DeviceConfigOut(
        device=device_id,
        version=rec.version,
        desired=DesiredConfigOut.model_validate(rec.body),
        published_version=rec.published_version,
        published_at=rec.published_at,
        applied_version=rec.applied_version,
        state=state,
        publish_attempts=rec.publish_attempts,
        last_error=rec.last_error,
        changed_by=rec.changed_by,
        changed_at=rec.changed_at,
    )


def configure(
    conn: psycopg.Connection,
    *,
    org: int,
    device_id: str,
    actor: str,
    reason: str,
    timing: DeviceConfigIn | None = None,
) -> None:
    """Write the device's next config version in the caller's transaction (the shipment and its
    local alarm follow the assignment; storage.device_config.follow_assignment)."""
    device_config.follow_assignment(
        conn, org=org, device_id=device_id, actor=actor, reason=reason,
        timing=None if timing is None else timing.model_dump(),
    )


@router.put(
    "/devices/{device_id}/config",
    tags=["devices"],
    response_model=DeviceConfigOut,
    responses=responses(*WITH_BODY, 404),
)
def put_device_config(
    device_id: DevicePath, body: DeviceConfigIn, conn: Conn, caller: Caller
) -> DeviceConfigOut:
    """Set the logger's config; it is published retained (QoS 1) and applied without a restart."""
    caller.require(Permission.REGISTER)
    with conn.transaction():
        registry.get_device(conn, org=caller.org_id, device_id=device_id)  # 404 before anything
        configure(conn, org=caller.org_id, device_id=device_id, actor=caller.name,
                  reason="config set", timing=body)
    return _out(conn, caller.org_id, device_id)


@router.get(
    "/devices/{device_id}/config",
    tags=["devices"],
    response_model=DeviceConfigOut,
    responses=responses(*AUTHED, 404),
)
def get_device_config(device_id: DevicePath, conn: Conn, caller: Caller) -> DeviceConfigOut:
    """The desired config, whether the broker holds it, and the version the device applied."""
    caller.require(Permission.READ)
    return _out(conn, caller.org_id, device_id)
