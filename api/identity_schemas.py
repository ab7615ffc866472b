"""Request and response models of the identity routes: signing in, users, organizations, API
keys, partner shares, profile change control and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool

from api.schemas import (
    LINE_PATTERN,
    TEXT_PATTERN,
    AlarmProfileOut,
    Line,
    ProfileState,
    SignatureIn,
    SignatureOut,
    _In,
    _Out,
    signature_out,
)
from coldchain.access import Role
from storage.api_keys import ApiKeyRow
from storage.profile_changes import ProfileVersion
from storage.shares import SCOPES, Share
from storage.users import UserRow

ORGANIZATION_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
EMAIL_PATTERN = r"^[^\s@]{1,64}@[^\s@.]+(?:\.[^\s@.]+)+$"
REFRESH_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"

Email = Annotated[
    str, Field(min_length=3, max_length=254, pattern=EMAIL_PATTERN, examples=["qa.lead@example.com"])
]
# What one types to sign in or sign: any characters; new ones meet the policy (12+ by default).
Password = Annotated[str, Field(min_length=1, max_length=256)]
NewPassword = Annotated[
    str, Field(min_length=12, max_length=256, description="the password policy applies (docs/identity.md)")
]
OrganizationId = Annotated[str, Field(pattern=ORGANIZATION_PATTERN, examples=["hosp-b"])]
Scope = Literal["readings", "alerts", "evidence", "acknowledge"]
assert set(SCOPES) == {"readings", "alerts", "evidence", "acknowledge"}


# -- auth -------------------------------------------------------------------------------------


class TokenOut(_Out):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds the access token is valid")
    refresh_token: str


class RefreshBody(_In):
    refresh_token: Annotated[str, Field(pattern=REFRESH_PATTERN)]


class CallerOut(_Out):
    """Who the token belongs to."""

    name: str
    printed_name: str | None
    kind: Literal["user", "api_key"]
    organization: str
    roles: list[Role]
    user_id: int | None


# -- users ------------------------------------------------------------------------------------


class UserCreate(_In):
    email: Email
    name: Line = Field(description="printed name, shown on every signature")
    roles: list[Role] = Field(min_length=1, max_length=6, examples=[["qa"]])
    password: NewPassword
    organization: OrganizationId | None = Field(
        default=None, description="platform admins only; default: yours"
    )


class UserUpdate(_In):
    name: Line | None = None
    roles: list[Role] | None = Field(default=None, min_length=1, max_length=6)
    disabled: StrictBool | None = None
    password: NewPassword | None = None
    unlock: StrictBool = False


class PasswordChange(_In):
    current_password: Password
    new_password: NewPassword


class TotpBody(_In):
    password: Password
    enable: StrictBool = True


class UserOut(_Out):
    id: int
    email: str
    name: str
    roles: list[Role]
    organization: str
    created_at: datetime
    disabled: bool
    disabled_at: datetime | None
    locked_until: datetime | None
    totp: bool


def user_out(user: UserRow) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.printed_name,
        roles=sorted(Role(r) for r in user.roles),
        organization=user.organization,
        created_at=user.created_at,
        disabled=user.disabled_at is not None,
        disabled_at=user.disabled_at,
        locked_until=user.locked_until,
        totp=user.totp,
    )


class TotpOut(_Out):
    """`secret` and `provisioning_uri` are shown once, when the second factor is turned on."""

    totp: bool
    secret: str | None = None
    provisioning_uri: str | None = None


# -- organizations ----------------------------------------------------------------------------

OrganizationKind = Literal["manufacturer", "3pl", "carrier", "customer", "hospital", "partner"]


class OrganizationCreate(_In):
    id: OrganizationId
    name: Line
    kind: OrganizationKind = "manufacturer"


class OrganizationOut(_Out):
    id: str
    name: str
    kind: OrganizationKind
    created_at: datetime


# -- API keys ---------------------------------------------------------------------------------


class ApiKeyCreate(_In):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=LINE_PATTERN, examples=["erp-sync"])]
    role: Role
    expires_in_days: int = Field(default=365, ge=1, le=3650)


class ApiKeyOut(_Out):
    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    bootstrap: bool


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the key itself, shown this once")


def api_key_out(row: ApiKeyRow) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        bootstrap=row.bootstrap,
    )


# -- partner shares ---------------------------------------------------------------------------


class ShareBody(_In):
    organization: OrganizationId
    scope: list[Scope] = Field(default=[], max_length=4, examples=[["readings", "alerts"]])


class ShareOut(_Out):
    id: int
    shipment: str
    organization: str
    scope: list[Scope]
    created_by: str
    created_at: datetime


def share_out(share: Share) -> ShareOut:
    return ShareOut.model_validate(
        {
            "id": share.id,
            "shipment": share.shipment_id,
            "organization": share.partner,
            "scope": list(share.scope),
            "created_by": share.created_by,
            "created_at": share.created_at,
        }
    )


# -- profile change control -------------------------------------------------------------------


class ApproveBody(_In):
    comment: Annotated[str, Field(max_length=4000, pattern=TEXT_PATTERN)] | None = None
    signature: SignatureIn | None = Field(
        default=None, description="required, with the meaning `approval`; 422 without it"
    )


class RollbackBody(_In):
    reason: Annotated[str, Field(min_length=1, max_length=4000, pattern=TEXT_PATTERN)]


class ProfileVersionOut(_Out):
    """One version of a profile under change control, with its approval signatures."""

    id: str
    version: int
    state: ProfileState
    created_by: str
    created_at: datetime
    approved_by: str | None
    approved_at: datetime | None
    based_on: int | None = Field(description="the version a rollback restored")
    profile: AlarmProfileOut
    signatures: list[SignatureOut]


def profile_version_out(v: ProfileVersion, signatures: list[Any]) -> ProfileVersionOut:
    from api.schemas import profile_out
    from coldchain.alarm_profile import AlarmProfile

    return ProfileVersionOut.model_validate(
        {
            "id": v.id,
            "version": v.version,
            "state": v.state,
            "created_by": v.created_by,
            "created_at": v.created_at,
            "approved_by": v.approved_by,
            "approved_at": v.approved_at,
            "based_on": v.based_on,
            "profile": profile_out(AlarmProfile.from_dict(v.body)),
            "signatures": [signature_out(s) for s in signatures],
        }
    )


# -- audit trail ------------------------------------------------------------------------------


class AuditEntry(_Out):
    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    key: str
    old: Any = Field(description="the value before, as JSON (null for a creation)")
    new: Any = Field(description="the value after, as JSON (null for a deletion)")
    reason: str | None
    hash: str = Field(description="this row's link in the organization's hash chain (hex)")


class TrailVerification(_Out):
    intact: bool
    rows: int
    organizations: int
    org_id: int | None = Field(description="the organization whose chain broke, if one did")
    row_id: int | None = Field(description="the first row that does not verify, if one does not")
    reason: str | None
    signed_checkpoints: int = Field(
        default=0, description="checkpoints verified with the platform's public key"
    )
    unchecked_checkpoints: int = Field(
        default=0, description="checkpoints older than the platform key's (HMAC), not checked here"
    )
