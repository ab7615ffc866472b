"""API tokens: random 256-bit bearer tokens stored only as SHA-256 digests, with a role each."""

from __future__ import annotations

import hashlib
import secrets

import psycopg

from coldchain.access import Principal, Role
from coldchain.errors import AuthError, NotFoundError
from storage.audit import record

TOKEN_PREFIX = "cc_"


def token_digest(token: str) -> bytes:
    """Tokens carry 256 random bits, so a plain SHA-256 is enough (no slow hash needed)."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def org_id(conn: psycopg.Connection, slug: str) -> int:
    row = conn.execute("SELECT id FROM organizations WHERE slug = %s", (slug,)).fetchone()
    if row is None:
        raise NotFoundError("organization", slug)
    return int(row[0])


def create_organization(conn: psycopg.Connection, slug: str, name: str) -> int:
    row = conn.execute(
        "INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id", (slug, name)
    ).fetchone()
    assert row is not None
    return int(row[0])


def create_token(
    conn: psycopg.Connection, *, org: int, name: str, role: Role, actor: str, token: str | None = None
) -> str:
    """Store a token's digest and return the token itself (shown once, never stored)."""
    value = token or new_token()
    conn.execute(
        "INSERT INTO api_tokens (org_id, name, role, token_hash) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (token_hash) DO NOTHING",
        (org, name, role.value, token_digest(value)),
    )
    record(
        conn,
        org_id=org,
        actor=actor,
        action="create",
        entity="api_token",
        key=name,
        new={"name": name, "role": role.value},
    )
    return value


def ensure_token(conn: psycopg.Connection, *, org: int, name: str, role: Role, token: str) -> bool:
    """Register `token` unless its digest is known already; True when it was added now."""
    known = conn.execute("SELECT 1 FROM api_tokens WHERE token_hash = %s", (token_digest(token),)).fetchone()
    if known:
        return False
    create_token(conn, org=org, name=name, role=role, actor="system", token=token)
    return True


def authenticate(conn: psycopg.Connection, token: str) -> Principal:
    """The API key behind `token`: known, not revoked, not expired. Its last use is written at most
    once a minute, so checking a key costs one indexed read per request."""
    row = conn.execute(
        "SELECT t.id, t.org_id, o.slug, t.role, t.name, t.last_used_at IS NULL"
        " OR t.last_used_at < now() - interval '1 minute'"
        " FROM api_tokens t JOIN organizations o ON o.id = t.org_id"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL"
        " AND (t.expires_at IS NULL OR t.expires_at > now())",
        (token_digest(token),),
    ).fetchone()
    if row is None:
        raise AuthError("unknown, expired or revoked token")
    if row[5]:
        conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (row[0],))
    return Principal(
        org_id=int(row[1]), organization=row[2], role=Role(row[3]), name=row[4], key_id=int(row[0])
    )


def revoke_token(conn: psycopg.Connection, *, org: int, name: str, actor: str) -> None:
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE org_id = %s AND name = %s AND revoked_at IS NULL",
        (org, name),
    )
    if cur.rowcount == 0:
        raise NotFoundError("api token", name)
    record(conn, org_id=org, actor=actor, action="revoke", entity="api_token", key=name)
