"""The audit trail: append a hash-chained row in the caller's transaction; verify the chain."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def record(
    conn: psycopg.Connection,
    *,
    org_id: int,
    actor: str,
    action: str,
    entity: str,
    key: str,
    old: Any = None,
    new: Any = None,
    reason: str | None = None,
) -> int:
    """Append one audit row inside the caller's transaction (so it commits with the change)."""
    row = conn.execute(
        "SELECT audit_append(%s::smallint, %s, %s, %s, %s, %s, %s, %s)",
        (
            org_id,
            actor,
            action,
            entity,
            key,
            Jsonb(old) if old is not None else None,
            Jsonb(new) if new is not None else None,
            reason,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


_RECOMPUTE = (
    "encode(sha256(prev_hash || convert_to(concat_ws(E'\\x1f',"
    " org_id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), actor,"
    " action, entity, entity_key, coalesce(old_value::text, ''), coalesce(new_value::text, ''),"
    " coalesce(reason, '')), 'UTF8')), 'hex')"
)


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The outcome of checking the whole trail: intact, or the first bad row and why."""

    intact: bool
    rows: int
    organizations: int
    org_id: int | None = None
    row_id: int | None = None
    reason: str | None = None
    signed_checkpoints: int = 0  # verified with the platform's public key
    unchecked_checkpoints: int = 0  # older HMAC checkpoints, without SECRET_KEY to check them

    def public(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "rows": self.rows,
            "organizations": self.organizations,
            "org_id": self.org_id,
            "row_id": self.row_id,
            "reason": self.reason,
            "signed_checkpoints": self.signed_checkpoints,
            "unchecked_checkpoints": self.unchecked_checkpoints,
        }


# The platform key signs checkpoints; storage never holds it: the caller passes the signing and
# verifying functions (the key lives with the evidence signing, outside the database).
Sign = Callable[[bytes], bytes]  # message -> Ed25519 signature
Verify = Callable[[bytes, bytes], bool]  # (signature, message) -> genuine


def checkpoint_message(org: int, last_id: int, rows: int, digest: bytes) -> bytes:
    """The bytes a checkpoint's signature covers (an auditor rebuilds them from the row)."""
    return f"coldchain-audit-checkpoint/1|{org}|{last_id}|{rows}|{digest.hex()}".encode()


def _checkpoint_mac(key: bytes, org: int, last_id: int, rows: int, digest: bytes) -> str:
    """The HMAC of checkpoints made before the platform key signed them (verified, never made)."""
    message = f"audit-checkpoint|{org}|{last_id}|{rows}|{digest.hex()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def checkpoint(conn: psycopg.Connection, *, sign: Sign, key_id: str) -> int:
    """Record a checkpoint, signed with the platform key, of every organization's head that
    moved since its last one."""
    made = 0
    with conn.transaction():
        heads = conn.execute(
            "SELECT h.org_id, h.last_id, h.rows, h.hash FROM audit_heads h"
            " WHERE h.last_id IS NOT NULL AND h.rows IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM audit_checkpoints c"
            "  WHERE c.org_id = h.org_id AND c.last_id = h.last_id AND c.hash = h.hash)"
        ).fetchall()  # each head row is one consistent (last id, rows, hash): no lock needed
        # (a row lock would need UPDATE on audit_heads, which the services' role must not hold)
        for org, last_id, rows, digest in heads:
            signature = sign(checkpoint_message(int(org), int(last_id), int(rows), bytes(digest)))
            conn.execute(
                "INSERT INTO audit_checkpoints (org_id, last_id, rows, hash, signature, key_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (org, last_id, rows, digest, signature.hex(), key_id),
            )
            made += 1
    return made


_FORGED = "does not carry the platform key's signature (forged or altered)"


def _check_checkpoints(
    conn: psycopg.Connection,
    hmac_key: bytes | None,
    verify: Verify | None,
    key_id: str | None,
    total: int,
    orgs: int,
) -> AuditVerdict:
    rows = conn.execute(
        "SELECT c.id, c.org_id, c.last_id, c.rows, c.hash, c.mac, c.signature, c.key_id, t.hash,"
        " (SELECT count(*) FROM audit_trail x WHERE x.org_id = c.org_id AND x.id <= c.last_id)"
        " FROM audit_checkpoints c LEFT JOIN audit_trail t ON t.id = c.last_id AND t.org_id = c.org_id"
        " ORDER BY c.id"
    ).fetchall()
    signed = unchecked = 0
    platform_signed = False
    checked: list[tuple[Any, ...]] = []
    # First every checkpoint's authenticity (a forged one is the finding), then the trail against
    # the genuine ones.
    for cp_id, org, last_id, count, digest, mac, signature, cp_key, trail_hash, trail_count in rows:
        problem: str | None = None
        if signature is not None:
            platform_signed = True
            if verify is None:
                unchecked += 1
                continue
            message = checkpoint_message(int(org), int(last_id), int(count), bytes(digest))
            if key_id is not None and cp_key != key_id:
                problem = f"checkpoint {cp_id} is signed by key {cp_key}, not by {key_id}"
            elif not verify(bytes.fromhex(signature), message):
                problem = f"checkpoint {cp_id} {_FORGED}"
            else:
                signed += 1
        elif platform_signed:  # once the platform key signs, an HMAC checkpoint is not genuine
            problem = f"checkpoint {cp_id} carries an HMAC after the platform key took over (forged)"
        elif hmac_key is None:
            unchecked += 1
            continue
        elif not hmac.compare_digest(
            _checkpoint_mac(hmac_key, int(org), int(last_id), int(count), bytes(digest)), mac
        ):
            problem = f"checkpoint {cp_id} {_FORGED}"
        if problem is not None:
            return AuditVerdict(False, total, orgs, int(org), int(last_id), problem, signed, unchecked)
        checked.append((cp_id, org, last_id, count, digest, trail_hash, trail_count))
    for cp_id, org, last_id, count, digest, trail_hash, trail_count in checked:
        if trail_hash is None or bytes(trail_hash) != bytes(digest) or int(trail_count) != int(count):
            problem = (
                f"the trail up to row {last_id} differs from signed checkpoint {cp_id}"
                " (the chain was rewritten)"
            )
            return AuditVerdict(False, total, orgs, int(org), int(last_id), problem, signed, unchecked)
    return AuditVerdict(True, total, orgs, signed_checkpoints=signed, unchecked_checkpoints=unchecked)


def verify_trail(
    conn: psycopg.Connection,
    *,
    checkpoint_key: bytes | None = None,
    verify: Verify | None = None,
    key_id: str | None = None,
) -> AuditVerdict:
    """Check every link of every organization's chain, then the chain's end against the recorded
    head (hash, row count, last id), so an altered row and removed newest rows are both found;
    then every checkpoint, so a chain rewritten end to end is found too: those signed with the
    platform key by `verify` (its public key; `key_id` names it), older HMAC ones with
    `checkpoint_key` (from SECRET_KEY). A checkpoint with nothing to check it is counted as
    unchecked."""
    heads = {
        int(r[0]): (bytes(r[1]), r[2], r[3])
        for r in conn.execute("SELECT org_id, hash, rows, last_id FROM audit_heads")
    }
    orgs = [int(r[0]) for r in conn.execute("SELECT DISTINCT org_id FROM audit_trail ORDER BY 1")]
    total = 0
    for org in sorted(set(orgs) | set(heads)):
        prev, count, last_id = b"", 0, None
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT id, prev_hash, hash, {_RECOMPUTE} FROM audit_trail WHERE org_id = %s ORDER BY id",
                (org,),
            )
            for row_id, prev_hash, stored, recomputed in cur:
                if bytes(prev_hash) != prev:
                    return AuditVerdict(
                        False,
                        total,
                        len(heads),
                        org,
                        int(row_id),
                        "its prev_hash is not the hash of the row before it (a row was removed or inserted)",
                    )
                if bytes(stored).hex() != recomputed:
                    return AuditVerdict(
                        False,
                        total,
                        len(heads),
                        org,
                        int(row_id),
                        "its content does not match its hash (altered)",
                    )
                prev, count, last_id = bytes(stored), count + 1, int(row_id)
                total += 1
        head = heads.get(org)
        if head is None:
            return AuditVerdict(
                False, total, len(heads), org, last_id, "the organization has no recorded head"
            )
        head_hash, head_rows, head_last = head
        if head_hash != prev:
            return AuditVerdict(
                False,
                total,
                len(heads),
                org,
                last_id,
                "the last row's hash is not the recorded head (newest rows were removed or the head altered)",
            )
        if head_rows is not None and head_rows != count:
            return AuditVerdict(
                False,
                total,
                len(heads),
                org,
                last_id,
                f"the head records {head_rows} rows but the trail holds {count}",
            )
        if head_last is not None and head_last != last_id:
            return AuditVerdict(
                False,
                total,
                len(heads),
                org,
                last_id,
                f"the head records last row {head_last}, the trail ends at {last_id}",
            )
    return _check_checkpoints(conn, checkpoint_key, verify, key_id, total, len(heads))


def search(
    conn: psycopg.Connection,
    *,
    org_id: int,
    entity: str | None = None,
    key: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """The organization's trail with filters, oldest first (page on with `after_id`)."""
    rows = conn.execute(
        "SELECT id, at, actor, action, entity, entity_key, old_value, new_value, reason, hash"
        " FROM audit_trail WHERE org_id = %(org)s"
        " AND (%(entity)s::text IS NULL OR entity = %(entity)s)"
        " AND (%(key)s::text IS NULL OR entity_key = %(key)s)"
        " AND (%(actor)s::text IS NULL OR actor = %(actor)s)"
        " AND (%(action)s::text IS NULL OR action = %(action)s)"
        " AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
        " AND (%(until)s::timestamptz IS NULL OR at < %(until)s)"
        " AND (%(after)s::bigint IS NULL OR id > %(after)s)"
        " ORDER BY id LIMIT %(limit)s",
        {
            "org": org_id,
            "entity": entity,
            "key": key,
            "actor": actor,
            "action": action,
            "since": since,
            "until": until,
            "after": after_id,
            "limit": limit,
        },
    ).fetchall()
    return [
        {
            "id": r[0],
            "at": r[1],
            "actor": r[2],
            "action": r[3],
            "entity": r[4],
            "key": r[5],
            "old": r[6],
            "new": r[7],
            "reason": r[8],
            "hash": bytes(r[9]).hex(),
        }
        for r in rows
    ]


def verify_chain(conn: psycopg.Connection, org_id: int) -> tuple[bool, int | None]:
    """Recompute every hash of the organization's trail; (ok, id of the first broken row)."""
    rows = conn.execute(
        "SELECT id, prev_hash, hash, encode(sha256(prev_hash || convert_to(concat_ws(E'\\x1f',"
        " org_id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), actor,"
        " action, entity, entity_key, coalesce(old_value::text, ''), coalesce(new_value::text, ''),"
        " coalesce(reason, '')), 'UTF8')), 'hex') FROM audit_trail WHERE org_id = %s ORDER BY id",
        (org_id,),
    ).fetchall()
    prev = b""
    for row_id, prev_hash, stored, recomputed in rows:
        if bytes(prev_hash) != prev or bytes(stored).hex() != recomputed:
            return False, int(row_id)
        prev = bytes(stored)
    return True, None


def trail(conn: psycopg.Connection, org_id: int, entity: str, key: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, at, actor, action, old_value, new_value, reason, hash FROM audit_trail"
        " WHERE org_id = %s AND entity = %s AND entity_key = %s ORDER BY id",
        (org_id, entity, key),
    ).fetchall()
    return [
        {
            "id": r[0],
            "at": r[1],
            "actor": r[2],
            "action": r[3],
            "old": r[4],
            "new": r[5],
            "reason": r[6],
            "hash": bytes(r[7]).hex(),
        }
        for r in rows
    ]
