"""Sharing a shipment with a partner organization (carrier, customer, hospital) and a scope."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller, Conn
from coldchain.access import Permission
from storage import registry, shares

router = APIRouter(tags=["shipments"])


class ShareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    organization: str = Field(min_length=1, max_length=63, examples=["hosp-b"])
    scope: list[str] = Field(
        default_factory=list, examples=[["readings", "alerts", "evidence", "acknowledge"]]
    )


@router.post("/shipments/{shipment_id}/shares", status_code=status.HTTP_201_CREATED)
def share_shipment(shipment_id: str, body: ShareBody, conn: Conn, caller: Caller) -> dict[str, Any]:
    """The partner's users then see this shipment and what the scope names, nothing else."""
    caller.require(Permission.REGISTER)
    return shares.share(
        conn,
        org=caller.org_id,
        shipment_id=shipment_id,
        partner=body.organization,
        scope=body.scope,
        actor=caller.name,
    ).public()


@router.get("/shipments/{shipment_id}/shares")
def list_shares(shipment_id: str, conn: Conn, caller: Caller) -> list[dict[str, Any]]:
    caller.require(Permission.REGISTER)
    registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment_id)  # 404 unless one's own
    return [s.public() for s in shares.of_shipment(conn, org=caller.org_id, shipment_id=shipment_id)]


@router.delete("/shipments/{shipment_id}/shares/{organization}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_share(shipment_id: str, organization: str, conn: Conn, caller: Caller) -> Response:
    caller.require(Permission.REGISTER)
    shares.revoke(conn, org=caller.org_id, shipment_id=shipment_id, partner=organization, actor=caller.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
