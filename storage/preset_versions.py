"""Built-in alarm profiles as frozen, released versions: the body of "2-8C v1" is written once and
read from here ever after, whatever the code's preset says later."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from coldchain.alarm_profile import AlarmProfile
from coldchain.esignature import canonical_json
from coldchain.presets import list_presets

log = logging.getLogger(__name__)


def body_sha256(profile: AlarmProfile) -> str:
    return hashlib.sha256(canonical_json(profile.to_dict())).hexdigest()


@dataclass(frozen=True, slots=True)
class Drift:
    """A preset whose body in the code differs from the version already released."""

    id: str
    version: int
    released_sha256: str
    code_sha256: str


def freeze(conn: psycopg.Connection) -> list[Drift]:
    """Release every preset version of the code not released yet; report the ones whose code
    body differs from what was released (the released body stays in force)."""
    drift: list[Drift] = []
    for preset in list_presets():
        digest = body_sha256(preset)
        conn.execute(
            "INSERT INTO preset_versions (id, version, body, body_sha256) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id, version) DO NOTHING",
            (preset.id, preset.version, Jsonb(preset.to_dict()), digest),
        )
        row = conn.execute(
            "SELECT body_sha256 FROM preset_versions WHERE id = %s AND version = %s",
            (preset.id, preset.version),
        ).fetchone()
        if row is not None and row[0] != digest:
            drift.append(Drift(preset.id, preset.version, str(row[0]), digest))
    for d in drift:
        log.error(
            "preset %s v%d in the code differs from the released version (sha256 %s, code %s); the"
            " released body stays in force: give the change a new version",
            d.id, d.version, d.released_sha256[:12], d.code_sha256[:12],
        )
    return drift


def released(conn: psycopg.Connection, profile_id: str, version: int | None = None) -> AlarmProfile | None:
    """A released preset version (the latest when `version` is None), or None."""
    row = conn.execute(
        "SELECT body FROM preset_versions WHERE id = %s AND (%s::int IS NULL OR version = %s::int)"
        " ORDER BY version DESC LIMIT 1",
        (profile_id, version, version),
    ).fetchone()
    return None if row is None else AlarmProfile.from_dict(row[0])


def latest_released(conn: psycopg.Connection) -> list[AlarmProfile]:
    """The latest released version of every preset, in id order."""
    rows = conn.execute(
        "SELECT DISTINCT ON (id) body FROM preset_versions ORDER BY id, version DESC"
    ).fetchall()
    return [AlarmProfile.from_dict(r[0]) for r in rows]
