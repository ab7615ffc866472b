"""E-signatures in PostgreSQL: append-only rows bound to the SHA-256 of the signed record, each
also written to the audit trail in the same transaction (21 CFR Part 11 §11.50, §11.70)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from coldchain.esignature import Meaning, Signature, record_hash
from storage.audit import record as audit

_COLUMNS = "id, entity, entity_key, action, signer_name, signer_email, meaning, signed_at, record_hash"


def _signature(row: tuple[Any, ...], current_hash: str | None) -> Signature:
    return Signature(
        id=int(row[0]),
        entity=row[1],
        key=row[2],
        action=row[3],
        signer=row[4],
        user=row[5],
        meaning=Meaning(row[6]),
        signed_at=row[7],
        record_hash=row[8],
        intact=None if current_hash is None else current_hash == row[8],
    )


def add(
    conn: psycopg.Connection,
    *,
    org: int,
    entity: str,
    key: str,
    action: str,
    user_id: int,
    signer_name: str,
    signer_email: str,
    meaning: Meaning,
    signed_record: dict[str, Any],
) -> Signature:
    """Store a signature on `signed_record` (the record as it stands after the signed act), in the
    caller's transaction, with its audit row."""
    digest = record_hash(signed_record)
    row = conn.execute(
        "INSERT INTO signatures (org_id, entity, entity_key, action, user_id, signer_name, signer_email,"
        " meaning, record_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (org, entity, key, action, user_id, signer_name, signer_email, meaning.value, digest),
    ).fetchone()
    assert row is not None
    signature = _signature(row, digest)
    audit(
        conn,
        org_id=org,
        actor=signer_email,
        action="sign",
        entity=entity,
        key=key,
        new={
            "signature": signature.id,
            "signer": signer_name,
            "meaning": meaning.value,
            "signed_at": _utc(signature.signed_at),
            "record_hash": digest,
            "action": action,
        },
        reason=signature.manifestation(),
    )
    return signature


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def for_record(
    conn: psycopg.Connection,
    *,
    org: int,
    entity: str,
    key: str,
    current_record: dict[str, Any] | None,
) -> list[Signature]:
    """The record's signatures, oldest first, each checked against the record as it is now."""
    current = None if current_record is None else record_hash(current_record)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM signatures"
        " WHERE org_id = %s AND entity = %s AND entity_key = %s ORDER BY id",
        (org, entity, key),
    ).fetchall()
    return [_signature(r, current) for r in rows]


def for_records(
    conn: psycopg.Connection, *, org: int, entity: str, keys: list[str]
) -> dict[str, list[Signature]]:
    """Signatures of many records (unchecked), for list views."""
    out: dict[str, list[Signature]] = {}
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM signatures WHERE org_id = %s AND entity = %s AND entity_key = ANY(%s)"
        " ORDER BY id",
        (org, entity, keys),
    ).fetchall()
    for r in rows:
        out.setdefault(r[2], []).append(_signature(r, None))
    return out
