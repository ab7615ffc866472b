"""21 CFR Part 11 electronic signatures, the pure part: meanings, and the canonical form of a
signed record whose SHA-256 the signature carries.

A signature is bound to the SHA-256 of its record's canonical JSON (keys sorted, no spaces,
UTF-8, times in UTC with microseconds). Rebuilding the record later and hashing it again shows
whether it changed since it was signed (§11.70: a signature cannot be moved to another record,
nor survive an edit of its own).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any


class Meaning(StrEnum):
    """What the signer means by signing (§11.50(a)(3))."""

    RELEASE = "release"
    REJECTION = "rejection"
    APPROVAL = "approval"
    REVIEW = "review"
    RESPONSIBILITY = "responsibility"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a signed record may only hold times with a UTC offset")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, (tuple, set, frozenset)):
        return [_plain(v) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def canonical_json(record: dict[str, Any]) -> bytes:
    """The one byte form of a record that its signature covers."""
    return json.dumps(
        _plain(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(record)).hexdigest()


@dataclass(frozen=True, slots=True)
class Signature:
    """A signature as every view and printout of the signed record shows it (§11.50)."""

    id: int
    entity: str
    key: str
    action: str
    signer: str  # printed name
    user: str  # e-mail
    meaning: Meaning
    signed_at: datetime  # the server's clock, UTC
    record_hash: str
    intact: bool | None = None  # None: not checked; False: the record changed after signing

    def public(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "signer": self.signer,
            "user": self.user,
            "meaning": self.meaning.value,
            "signed_at": self.signed_at.astimezone(UTC),
            "record_hash": self.record_hash,
            "action": self.action,
        }
        if self.intact is not None:
            doc["status"] = "valid" if self.intact else "broken"
            if not self.intact:
                doc["reason"] = "the record changed after it was signed"
        return doc

    def manifestation(self) -> str:
        """The printed line (§11.50(b)): name, time (UTC), meaning."""
        at = self.signed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"Signed by {self.signer} <{self.user}> on {at}, meaning: {self.meaning.value}"
