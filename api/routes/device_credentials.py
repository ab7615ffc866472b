"""A device's broker credential: issued (the password shown once) and revoked, in the database
and on the running broker together, so a revoked logger is cut off at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, Field

from api import device_credentials
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, responses
from api.schemas import DEVICE_ID_PATTERN
from coldchain.access import Permission

router = APIRouter()

DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["TRK-0042-L1"])]


class DeviceCredentialOut(BaseModel):
    """The MQTT login of one device. `password` is shown here once and kept nowhere in clear."""

    device: str = Field(description="the device id")
    username: str = Field(
        description="the MQTT username, the device's MQTT name: its id in the default organization,"
        " `{organization}~{id}` in another; the device publishes under it (topics and batches)"
    )
    password: str = Field(description="the MQTT password; shown once, store it on the device")
    replaced: bool = Field(description="true when this revoked an earlier credential of the device")
    issued_at: datetime
    topics: list[str] = Field(description="what the device may publish; it may also read its config topic")


@router.post(
    "/devices/{device_id}/credentials",
    tags=["devices"],
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceCredentialOut,
    responses=responses(*AUTHED, 404, 503),
)
def issue_credentials(
    device_id: DevicePath,
    conn: Conn,
    caller: Caller,
    settings: AppSettings,
) -> DeviceCredentialOut:
    """Issue (or rotate) the device's MQTT password. The broker knows it before this answers; an
    earlier password stops working and a session logged in with it is disconnected. 503 when
    the broker cannot be reached (then nothing changed)."""
    caller.require(Permission.PROVISION)
    issued = device_credentials.issue(
        conn, settings, org=caller.org_id, device_id=device_id, actor=caller.name
    )
    return DeviceCredentialOut(
        device=device_id,
        username=issued.username,
        password=issued.password,
        replaced=issued.replaced,
        issued_at=datetime.now(UTC),
        topics=list(issued.topics),
    )


@router.delete(
    "/devices/{device_id}/credentials",
    tags=["devices"],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(*AUTHED, 404, 503),
)
def revoke_credentials(device_id: DevicePath, conn: Conn, caller: Caller, settings: AppSettings) -> Response:
    """Revoke the device's MQTT password: the broker refuses it from now on and disconnects a
    session using it. A device without a credential: 204 as well."""
    caller.require(Permission.PROVISION)
    device_credentials.revoke(conn, settings, org=caller.org_id, device_id=device_id, actor=caller.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
