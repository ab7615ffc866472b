"""People: accounts with argon2id passwords and roles, login attempts and lockout, refresh tokens.

Every login, failure, lockout and account change writes its audit row in the same transaction
(21 CFR Part 11 §11.300(d): attempts at unauthorized use are recorded and can be reported).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from coldchain.access import Role
from coldchain.errors import AuthError, ConflictError, NotFoundError, ValidationError
from coldchain.passwords import PasswordHashing, PasswordPolicy
from storage.audit import record

REFRESH_PREFIX = "ccr_"


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    org_id: int
    organization: str
    email: str
    printed_name: str
    roles: list[str]
    created_at: datetime
    disabled_at: datetime | None
    locked_until: datetime | None
    sessions_valid_after: datetime | None
    totp: bool

    def role_set(self) -> frozenset[Role]:
        return frozenset(Role(r) for r in self.roles)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.printed_name,
            "roles": sorted(self.roles),
            "organization": self.organization,
            "created_at": self.created_at,
            "disabled": self.disabled_at is not None,
            "disabled_at": self.disabled_at,
            "locked_until": self.locked_until,
            "totp": self.totp,
        }


@dataclass(frozen=True, slots=True)
class Lockout:
    """The lockout rule: `failures` failed attempts within `window_s` lock for `duration_s`."""

    failures: int = 5
    window_s: int = 900
    duration_s: int = 900


_COLUMNS = (
    "u.id, u.org_id, o.slug AS organization, u.email, u.printed_name, u.roles, u.created_at,"
    " u.disabled_at, u.locked_until, u.sessions_valid_after, u.totp_secret IS NOT NULL AS totp"
)
_FROM = " FROM users u JOIN organizations o ON o.id = u.org_id"


def _normal_email(email: str) -> str:
    value = email.strip()
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in value) or len(value) > 254:
        raise ValidationError(f"{email!r} is not an e-mail address", field="email")
    return f"{local}@{domain.lower()}"


def create_user(
    conn: psycopg.Connection,
    *,
    org: int,
    email: str,
    printed_name: str,
    roles: frozenset[Role],
    password: str,
    actor: str,
    policy: PasswordPolicy,
    hashing: PasswordHashing,
) -> UserRow:
    address = _normal_email(email)
    if not printed_name.strip():
        raise ValidationError("a user needs a printed name (it appears on every signature)", field="name")
    policy.check(password, email=address)
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO users (org_id, email, printed_name, roles, password_hash)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (org, address, printed_name.strip(), sorted(r.value for r in roles), hashing.hash(password)),
            ).fetchone()
            assert row is not None
            record(
                conn,
                org_id=org,
                actor=actor,
                action="create",
                entity="user",
                key=address,
                new={"email": address, "name": printed_name.strip(), "roles": sorted(r.value for r in roles)},
            )
    except psycopg.errors.UniqueViolation:
        raise ConflictError(f"a user with e-mail {address!r} exists already") from None
    return get_user(conn, org=org, user_id=int(row[0]))


def get_user(conn: psycopg.Connection, *, org: int | None, user_id: int) -> UserRow:
    """A user of this organization (any organization when `org` is None)."""
    with conn.cursor(row_factory=class_row(UserRow)) as cur:
        found = cur.execute(
            f"SELECT {_COLUMNS}{_FROM} WHERE u.id = %s AND (%s::smallint IS NULL OR u.org_id = %s)",
            (user_id, org, org),
        ).fetchone()
    if found is None:
        raise NotFoundError("user", str(user_id))
    return found


def list_users(conn: psycopg.Connection, *, org: int) -> list[UserRow]:
    with conn.cursor(row_factory=class_row(UserRow)) as cur:
        return cur.execute(f"SELECT {_COLUMNS}{_FROM} WHERE u.org_id = %s ORDER BY u.id", (org,)).fetchall()


def update_user(
    conn: psycopg.Connection,
    *,
    org: int,
    user_id: int,
    actor: str,
    printed_name: str | None = None,
    roles: frozenset[Role] | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    unlock: bool = False,
    policy: PasswordPolicy,
    hashing: PasswordHashing,
) -> UserRow:
    """Change a user (admin); old and new values go to the audit trail. A new password, a disable or
    a role change ends the user's sessions (their tokens stop working)."""
    with conn.transaction():
        before = get_user(conn, org=org, user_id=user_id)
        old: dict[str, Any] = {}
        new: dict[str, Any] = {}
        sets: list[str] = []
        params: list[Any] = []
        end_sessions = False
        if printed_name is not None and printed_name.strip() != before.printed_name:
            if not printed_name.strip():
                raise ValidationError("a printed name may not be empty", field="name")
            sets.append("printed_name = %s")
            params.append(printed_name.strip())
            old["name"], new["name"] = before.printed_name, printed_name.strip()
        if roles is not None and sorted(r.value for r in roles) != sorted(before.roles):
            sets.append("roles = %s")
            params.append(sorted(r.value for r in roles))
            old["roles"], new["roles"] = sorted(before.roles), sorted(r.value for r in roles)
            end_sessions = True
        if disabled is not None and disabled != (before.disabled_at is not None):
            sets.append("disabled_at = " + ("now()" if disabled else "NULL"))
            old["disabled"], new["disabled"] = not disabled, disabled
            end_sessions = end_sessions or disabled
        if password is not None:
            policy.check(password, email=before.email)
            sets.append("password_hash = %s, password_changed_at = now()")
            params.append(hashing.hash(password))
            new["password"] = "changed"
            end_sessions = True
        if unlock and before.locked_until is not None:
            sets.append("locked_until = NULL")
            old["locked_until"], new["locked_until"] = before.locked_until.isoformat(), None
        if not sets:
            return before
        if end_sessions:
            sets.append("sessions_valid_after = clock_timestamp()")
        conn.execute(
            f"UPDATE users SET {', '.join(sets)}, updated_at = now() WHERE id = %s",
            (*params, user_id),
        )
        if end_sessions:
            conn.execute(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL",
                (user_id,),
            )
        record(
            conn, org_id=org, actor=actor, action="update", entity="user", key=before.email, old=old, new=new
        )
    return get_user(conn, org=org, user_id=user_id)


# --------------------------------------------------------------------------- login


@dataclass(frozen=True, slots=True)
class Credentials:
    user: UserRow
    password_hash: str
    totp_secret: str | None


def _credentials_by_email(conn: psycopg.Connection, email: str) -> Credentials | None:
    row = conn.execute(
        f"SELECT {_COLUMNS}, u.password_hash, u.totp_secret{_FROM} WHERE lower(u.email) = lower(%s)",
        (email.strip(),),
    ).fetchone()
    if row is None:
        return None
    return Credentials(user=UserRow(*row[:11]), password_hash=row[11], totp_secret=row[12])


def _credentials_by_id(conn: psycopg.Connection, user_id: int) -> Credentials:
    row = conn.execute(
        f"SELECT {_COLUMNS}, u.password_hash, u.totp_secret{_FROM} WHERE u.id = %s", (user_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError("user", str(user_id))
    return Credentials(user=UserRow(*row[:11]), password_hash=row[11], totp_secret=row[12])


def _attempt(conn: psycopg.Connection, user: UserRow | None, email: str, outcome: str) -> None:
    conn.execute(
        "INSERT INTO login_attempts (user_id, email, outcome) VALUES (%s, %s, %s)",
        (user.id if user else None, email, outcome),
    )


def _failed_since_reset(conn: psycopg.Connection, user_id: int, window_s: int) -> int:
    """Failures in the window after the last success or lockout (a lockout starts a fresh count)."""
    row = conn.execute(
        "SELECT count(*) FROM login_attempts WHERE user_id = %(u)s AND outcome = 'failure'"
        " AND at > clock_timestamp() - make_interval(secs => %(w)s)"
        " AND at > coalesce((SELECT max(at) FROM login_attempts WHERE user_id = %(u)s"
        "   AND outcome IN ('success', 'locked')), '-infinity')",
        {"u": user_id, "w": window_s},
    ).fetchone()
    assert row is not None
    return int(row[0])


def check_password(
    conn: psycopg.Connection,
    *,
    email: str | None = None,
    user_id: int | None = None,
    password: str,
    hashing: PasswordHashing,
    lockout: Lockout,
    purpose: str = "login",
    totp_code: str | None = None,
) -> UserRow:
    """Verify a person's password (a login, or the re-entry a signature needs), counting failures.

    Commits its own record of the attempt (a failure must stay recorded even though the caller's
    request fails), so call it outside the caller's transaction. Raises AuthError on any refusal.
    """
    with conn.transaction():
        creds = (
            _credentials_by_email(conn, email)
            if email is not None
            else _credentials_by_id(conn, user_id)
            if user_id is not None
            else None
        )
        label = email or (creds.user.email if creds else "?")
        if creds is None:
            hashing.burn(password)
            _attempt(conn, None, label, "failure")
            record(
                conn,
                org_id=1,
                actor=label,
                action=f"{purpose}_failed",
                entity="user",
                key=label,
                reason="unknown e-mail",
            )
            failure: str | None = "wrong e-mail or password"
        else:
            failure = _verify(conn, creds, password, hashing, lockout, purpose, totp_code)
    if failure:
        raise AuthError(failure)
    assert creds is not None
    if hashing.needs_rehash(creds.password_hash):
        conn.execute(
            "UPDATE users SET password_hash = %s WHERE id = %s", (hashing.hash(password), creds.user.id)
        )
    return creds.user


def _verify(
    conn: psycopg.Connection,
    creds: Credentials,
    password: str,
    hashing: PasswordHashing,
    lockout: Lockout,
    purpose: str,
    totp_code: str | None,
) -> str | None:
    """None when the attempt succeeds, else the refusal's message (every outcome is recorded)."""
    user = creds.user
    org, who = user.org_id, user.email
    now = datetime.now(UTC)
    if user.disabled_at is not None:
        hashing.burn(password)
        _attempt(conn, user, who, "refused")
        record(
            conn, org_id=org, actor=who, action=f"{purpose}_failed", entity="user", key=who, reason="disabled"
        )
        return "wrong e-mail or password"
    if user.locked_until is not None and user.locked_until > now:
        _attempt(conn, user, who, "refused")
        record(
            conn, org_id=org, actor=who, action=f"{purpose}_failed", entity="user", key=who, reason="locked"
        )
        until = user.locked_until.astimezone(UTC).strftime("%H:%M:%S UTC")
        return f"the account is locked after repeated failures; try again after {until}"
    ok = hashing.verify(creds.password_hash, password)
    reason = None if ok else "wrong password"
    if ok and creds.totp_secret is not None and purpose == "login":
        import pyotp

        if not totp_code or not pyotp.TOTP(creds.totp_secret).verify(totp_code, valid_window=1):
            ok, reason = False, "wrong or missing one-time code"
    if ok:
        _attempt(conn, user, who, "success")
        if user.locked_until is not None:  # an expired lock, cleared at the first success
            conn.execute("UPDATE users SET locked_until = NULL WHERE id = %s", (user.id,))
        record(conn, org_id=org, actor=who, action=purpose, entity="user", key=who)
        return None
    _attempt(conn, user, who, "failure")
    record(conn, org_id=org, actor=who, action=f"{purpose}_failed", entity="user", key=who, reason=reason)
    if _failed_since_reset(conn, user.id, lockout.window_s) >= lockout.failures:
        locked_until = now + timedelta(seconds=lockout.duration_s)
        conn.execute("UPDATE users SET locked_until = %s WHERE id = %s", (locked_until, user.id))
        _attempt(conn, user, who, "locked")
        record(
            conn,
            org_id=org,
            actor="system",
            action="lockout",
            entity="user",
            key=who,
            new={"locked_until": locked_until.isoformat()},
            reason=f"{lockout.failures} failed attempts within {lockout.window_s} s",
        )
    return "wrong e-mail or password" if purpose == "login" else "wrong password: the signature is refused"


def session_user(conn: psycopg.Connection, user_id: int) -> UserRow:
    """The user behind an access token, as the database has it now (roles, disabled, sessions)."""
    with conn.cursor(row_factory=class_row(UserRow)) as cur:
        found = cur.execute(f"SELECT {_COLUMNS}{_FROM} WHERE u.id = %s", (user_id,)).fetchone()
    if found is None:
        raise AuthError("invalid access token")
    return found


def set_totp(conn: psycopg.Connection, *, org: int, user_id: int, secret: str | None, actor: str) -> None:
    with conn.transaction():
        user = get_user(conn, org=org, user_id=user_id)
        conn.execute("UPDATE users SET totp_secret = %s, updated_at = now() WHERE id = %s", (secret, user_id))
        record(
            conn,
            org_id=org,
            actor=actor,
            action="totp_" + ("enable" if secret else "disable"),
            entity="user",
            key=user.email,
        )


# --------------------------------------------------------------------------- refresh tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue_refresh(
    conn: psycopg.Connection, *, user_id: int, ttl_s: int, family: uuid.UUID | None = None
) -> str:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO refresh_tokens (user_id, family, token_hash, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
        (user_id, family or uuid.uuid4(), _digest(token), ttl_s),
    )
    return token


def rotate_refresh(conn: psycopg.Connection, *, token: str, ttl_s: int) -> tuple[UserRow, str]:
    """Retire this refresh token and issue its successor; a retired one used again revokes the
    whole family (someone else holds a copy). Commits its own transaction."""
    with conn.transaction():
        row = conn.execute(
            "SELECT id, user_id, family, expires_at < now(), used_at IS NOT NULL, revoked_at IS NOT NULL"
            " FROM refresh_tokens WHERE token_hash = %s FOR UPDATE",
            (_digest(token),),
        ).fetchone()
        if row is None:
            failure = "unknown refresh token"
        else:
            token_id, user_id, family, expired, used, revoked = row
            user = session_user(conn, int(user_id))
            if used and not revoked:
                conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = now() WHERE family = %s AND revoked_at IS NULL",
                    (family,),
                )
                record(
                    conn,
                    org_id=user.org_id,
                    actor=user.email,
                    action="refresh_reuse",
                    entity="user",
                    key=user.email,
                    reason="a retired refresh token was used again; its family is revoked",
                )
                failure = "refresh token already used; sign in again"
            elif revoked:
                failure = "refresh token revoked; sign in again"
            elif expired:
                failure = "refresh token expired; sign in again"
            elif user.disabled_at is not None:
                failure = "the account is disabled"
            else:
                conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE id = %s", (token_id,))
                return user, issue_refresh(conn, user_id=user.id, ttl_s=ttl_s, family=family)
    raise AuthError(failure)


def revoke_refresh(conn: psycopg.Connection, *, token: str) -> bool:
    """Log out: revoke the token's whole family (audited). True when there was one."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND family ="
            " (SELECT family FROM refresh_tokens WHERE token_hash = %s) RETURNING user_id",
            (_digest(token),),
        ).fetchall()
        if rows:
            user = session_user(conn, int(rows[0][0]))
            record(conn, org_id=user.org_id, actor=user.email, action="logout", entity="user", key=user.email)
    return bool(rows)


def change_own_password(
    conn: psycopg.Connection,
    *,
    user_id: int,
    current: str,
    new: str,
    hashing: PasswordHashing,
    lockout: Lockout,
    policy: PasswordPolicy,
) -> UserRow:
    """A person changes their own password: the current one first (counted like a login)."""
    user = check_password(
        conn, user_id=user_id, password=current, hashing=hashing, lockout=lockout, purpose="reauthenticate"
    )
    if new == current:
        raise ValidationError("the new password must differ from the current one", field="new_password")
    return update_user(
        conn, org=user.org_id, user_id=user_id, actor=user.email, password=new, policy=policy, hashing=hashing
    )
