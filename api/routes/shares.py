"""Sharing a shipment with a partner organization (carrier, customer, hospital) and a scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from api.deps import Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.identity_schemas import ORGANIZATION_PATTERN, ShareBody, ShareOut, share_out
from api.schemas import SHIPMENT_SEGMENT_PATTERN
from coldchain.access import Permission
from storage import registry, shares

router = APIRouter(tags=["shipments"])

ShipmentPath = Annotated[str, Path(pattern=SHIPMENT_SEGMENT_PATTERN, examples=["SO-1001"])]
OrganizationPath = Annotated[str, Path(pattern=ORGANIZATION_PATTERN, examples=["hosp-b"])]


@router.post(
    "/shipments/{shipment_id}/shares",
    status_code=status.HTTP_201_CREATED,
    response_model=ShareOut,
    responses=responses(*WITH_BODY, 404),
)
def share_shipment(shipment_id: ShipmentPath, body: ShareBody, conn: Conn, caller: Caller) -> ShareOut:
    """The partner's users then see this shipment and what the scope names, nothing else. Sharing
    again replaces the scope; the partner must be another organization that exists (404, 422)."""
    caller.require(Permission.REGISTER)
    return share_out(
        shares.share(
            conn,
            org=caller.org_id,
            shipment_id=shipment_id,
            partner=body.organization,
            scope=list(body.scope),
            actor=caller.name,
        )
    )


@router.get(
    "/shipments/{shipment_id}/shares",
    response_model=list[ShareOut],
    responses=responses(*AUTHED, 404),
)
def list_shares(shipment_id: ShipmentPath, conn: Conn, caller: Caller) -> list[ShareOut]:
    caller.require(Permission.REGISTER)
    registry.get_shipment(conn, org=caller.org_id, shipment_id=shipment_id)  # 404 unless one's own
    return [share_out(s) for s in shares.of_shipment(conn, org=caller.org_id, shipment_id=shipment_id)]


@router.delete(
    "/shipments/{shipment_id}/shares/{organization}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(*AUTHED, 404),
)
def revoke_share(
    shipment_id: ShipmentPath, organization: OrganizationPath, conn: Conn, caller: Caller
) -> Response:
    caller.require(Permission.REGISTER)
    shares.revoke(conn, org=caller.org_id, shipment_id=shipment_id, partner=organization, actor=caller.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
