"""The identity settings as the API uses them, and the principal a person's access token stands for."""

from __future__ import annotations

from functools import cache

import psycopg

from coldchain import access_tokens
from coldchain.access import Principal, PrincipalKind
from coldchain.errors import AuthError
from coldchain.passwords import PasswordHashing, PasswordPolicy
from coldchain.settings import Settings
from storage import users
from storage.users import Lockout


def hashing(settings: Settings) -> PasswordHashing:
    return PasswordHashing(
        memory_kib=settings.argon2_memory_kib, passes=settings.argon2_passes, lanes=settings.argon2_lanes
    )


def policy(settings: Settings) -> PasswordPolicy:
    return PasswordPolicy(min_length=settings.password_min_length)


def lockout(settings: Settings) -> Lockout:
    return Lockout(
        failures=settings.lockout_failures,
        window_s=settings.lockout_window_s,
        duration_s=settings.lockout_duration_s,
    )


@cache
def _key(secret: str) -> bytes:
    return access_tokens.derive_key(secret, "access-token")


def token_key(settings: Settings) -> bytes:
    return _key(settings.require_secret_key())


def user_principal(user: users.UserRow) -> Principal:
    roles = user.role_set()
    return Principal(
        org_id=user.org_id,
        organization=user.organization,
        role=sorted(roles)[0],
        roles=roles,
        name=user.email,
        kind=PrincipalKind.USER,
        user_id=user.id,
        printed_name=user.printed_name,
    )


def authenticate_user(conn: psycopg.Connection, settings: Settings, token: str) -> Principal:
    """A person's access token: signature and expiry, then the account as it is now."""
    claims = access_tokens.verify(token_key(settings), token)
    user = users.session_user(conn, claims.user_id)
    if user.disabled_at is not None:
        raise AuthError("the account is disabled")
    ended = user.sessions_valid_after
    if user.org_id != claims.org_id or (ended is not None and claims.issued_at < ended.timestamp()):
        raise AuthError("the session has ended; sign in again")
    return user_principal(user)
