"""Change control of alarm profiles: drafts, approval by a different QA person, rollback as a new
version with old content; every step in the audit trail with the old and the new body."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coldchain.alarm_profile import AlarmProfile
from coldchain.errors import ConflictError, NotFoundError, PermissionDeniedError
from storage.audit import record
from storage.profiles import _preset


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileVersion:
    id: str
    version: int
    state: str
    body: dict[str, Any]
    created_by: str
    created_at: datetime
    approved_by: str | None
    approved_at: datetime | None
    based_on: int | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "state": self.state,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "approved_by": self.approved_by,
            "approved_at": self.approved_at,
            "based_on": self.based_on,
            "profile": self.body,
        }

    def signed_record(self) -> dict[str, Any]:
        """What an approval signature covers: the exact body, its author and the decision."""
        return {
            "entity": "alarm_profile",
            "id": self.id,
            "version": self.version,
            "state": self.state,
            "body": self.body,
            "created_by": self.created_by,
            "approved_by": self.approved_by,
            "approved_at": self.approved_at,
            "based_on": self.based_on,
        }


_COLUMNS = "id, version, state, body, created_by, created_at, approved_by, approved_at, based_on"


def _latest_approved(conn: psycopg.Connection, org: int, profile_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT body FROM alarm_profiles WHERE org_id = %s AND id = %s AND state = 'approved'"
        " ORDER BY version DESC LIMIT 1",
        (org, profile_id),
    ).fetchone()
    return None if row is None else dict(row[0])


def get_version(conn: psycopg.Connection, *, org: int, profile_id: str, version: int) -> ProfileVersion:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM alarm_profiles WHERE org_id = %s AND id = %s AND version = %s",
        (org, profile_id, version),
    ).fetchone()
    if row is None:
        raise NotFoundError("alarm profile", f"{profile_id} v{version}")
    return ProfileVersion(*row)


def versions(conn: psycopg.Connection, *, org: int, profile_id: str) -> list[ProfileVersion]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM alarm_profiles WHERE org_id = %s AND id = %s ORDER BY version",
        (org, profile_id),
    ).fetchall()
    if not rows:
        raise NotFoundError("alarm profile", profile_id)
    return [ProfileVersion(*r) for r in rows]


def save_draft(
    conn: psycopg.Connection, *, org: int, profile: AlarmProfile, actor: str, based_on: int | None = None
) -> ProfileVersion:
    """A new version in state draft; it changes nothing until a different QA person approves it."""
    if _preset(profile.id) is not None:
        raise ConflictError(f"{profile.id!r} is a built-in preset; choose another id")
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"profile:{org}:{profile.id}",)
        )
        row = conn.execute(
            "SELECT coalesce(max(version), 0) FROM alarm_profiles WHERE org_id = %s AND id = %s",
            (org, profile.id),
        ).fetchone()
        version = int(row[0]) + 1 if row else 1
        body = dataclasses.replace(profile, version=version).to_dict()
        conn.execute(
            "INSERT INTO alarm_profiles (org_id, id, version, body, created_by, state, based_on)"
            " VALUES (%s, %s, %s, %s, %s, 'draft', %s)",
            (org, profile.id, version, Jsonb(body), actor, based_on),
        )
        record(
            conn,
            org_id=org,
            actor=actor,
            action="rollback_draft" if based_on else "draft",
            entity="alarm_profile",
            key=profile.id,
            old=_latest_approved(conn, org, profile.id),
            new={"version": version, "state": "draft", "body": body, "based_on": based_on},
        )
    return get_version(conn, org=org, profile_id=profile.id, version=version)


def approve(
    conn: psycopg.Connection, *, org: int, profile_id: str, version: int, approver: str, reason: str | None
) -> ProfileVersion:
    """Approve a draft, in the caller's transaction (the caller adds the signature). The author of
    a change may not approve it (segregation of duties)."""
    row = conn.execute(
        "SELECT state, created_by FROM alarm_profiles"
        " WHERE org_id = %s AND id = %s AND version = %s FOR UPDATE",
        (org, profile_id, version),
    ).fetchone()
    if row is None:
        raise NotFoundError("alarm profile", f"{profile_id} v{version}")
    state, author = row
    if state != "draft":
        raise ConflictError(f"{profile_id} v{version} is {state}, not a draft")
    if author == approver:
        raise PermissionDeniedError(
            "the author of a profile change may not approve it; another QA person must"
        )
    before = _latest_approved(conn, org, profile_id)
    conn.execute(
        "UPDATE alarm_profiles SET state = 'approved', approved_by = %s, approved_at = clock_timestamp()"
        " WHERE org_id = %s AND id = %s AND version = %s",
        (approver, org, profile_id, version),
    )
    approved = get_version(conn, org=org, profile_id=profile_id, version=version)
    record(
        conn,
        org_id=org,
        actor=approver,
        action="approve",
        entity="alarm_profile",
        key=profile_id,
        old=before,
        new={"version": version, "state": "approved", "body": approved.body},
        reason=reason,
    )
    return approved
