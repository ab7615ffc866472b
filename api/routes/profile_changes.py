"""Change control of alarm profiles: the versions of a profile, approval under an e-signature by
a QA person other than the author, and rollback (a new draft with an earlier version's content)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from api import esign
from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.identity_schemas import ApproveBody, ProfileVersionOut, RollbackBody, profile_version_out
from api.schemas import PG_INT, PROFILE_ID_PATTERN
from coldchain.access import Permission
from coldchain.alarm_profile import AlarmProfile
from coldchain.errors import PermissionDeniedError, ValidationError
from storage import profile_changes

router = APIRouter(tags=["profiles"])

ProfilePath = Annotated[str, Path(pattern=PROFILE_ID_PATTERN, examples=["2-8C"])]
VersionPath = Annotated[int, Path(ge=1, le=PG_INT)]


def _shown(conn: Conn, org: int, v: profile_changes.ProfileVersion) -> ProfileVersionOut:
    return profile_version_out(
        v,
        esign.shown(
            conn, org=org, entity="alarm_profile", key=f"{v.id} v{v.version}", record=v.signed_record()
        ),
    )


@router.get(
    "/profiles/{profile_id}/versions",
    response_model=list[ProfileVersionOut],
    responses=responses(*AUTHED, 404),
)
def list_versions(profile_id: ProfilePath, conn: Conn, caller: Caller) -> list[ProfileVersionOut]:
    """Every version of a custom profile, drafts included, with their approval signatures."""
    return [
        _shown(conn, caller.org_id, v)
        for v in profile_changes.versions(conn, org=caller.org_id, profile_id=profile_id)
    ]


@router.post(
    "/profiles/{profile_id}/versions/{version}/approve",
    response_model=ProfileVersionOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def approve(
    profile_id: ProfilePath,
    version: VersionPath,
    body: ApproveBody,
    conn: Conn,
    caller: Caller,
    settings: AppSettings,
) -> ProfileVersionOut:
    """QA approves a draft with an e-signature (meaning `approval`); the author may not."""
    caller.require(Permission.CHANGE_PROFILE)
    signature = esign.require(body.signature)
    if signature.meaning.value != "approval":
        raise ValidationError(
            "a profile approval is signed with the meaning 'approval'", field="signature.meaning"
        )
    draft = profile_changes.get_version(conn, org=caller.org_id, profile_id=profile_id, version=version)
    if draft.created_by == caller.name:
        raise PermissionDeniedError(
            "the author of a profile change may not approve it; another QA person must"
        )
    signer = esign.reauthenticate(conn, settings, caller, signature)
    with conn.transaction():
        approved = profile_changes.approve(
            conn,
            org=caller.org_id,
            profile_id=profile_id,
            version=version,
            approver=caller.name,
            reason=body.comment,
        )
        esign.sign(
            conn,
            caller,
            signer,
            signature,
            entity="alarm_profile",
            key=f"{profile_id} v{version}",
            action="approve",
            record=approved.signed_record(),
        )
    return _shown(conn, caller.org_id, approved)


@router.post(
    "/profiles/{profile_id}/versions/{version}/rollback",
    status_code=status.HTTP_201_CREATED,
    response_model=ProfileVersionOut,
    responses=responses(*WITH_BODY, 404, 409),
)
def rollback(
    profile_id: ProfilePath, version: VersionPath, body: RollbackBody, conn: Conn, caller: Caller
) -> ProfileVersionOut:
    """A new draft with the content of an earlier version; it takes effect when approved."""
    caller.require(Permission.CHANGE_PROFILE)
    old = profile_changes.get_version(conn, org=caller.org_id, profile_id=profile_id, version=version)
    if old.state != "approved":
        raise ValidationError("only an approved version can be restored", field="version")
    draft = profile_changes.save_draft(
        conn, org=caller.org_id, profile=AlarmProfile.from_dict(old.body), actor=caller.name, based_on=version
    )
    return _shown(conn, caller.org_id, draft)
