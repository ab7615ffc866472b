"""Presets are released versions: their bodies are frozen in the database when the schema is
migrated, so editing a preset in the code cannot change what an existing version means."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

import storage.preset_versions as preset_versions
from coldchain.alarm_profile import AlarmProfile
from coldchain.presets import get_preset, list_presets
from storage import profiles


def _edited(threshold_c: float, version: int) -> tuple[AlarmProfile, ...]:
    """The code's presets with 2-8C's H1 moved to `threshold_c`, as `version`."""
    out = []
    for p in list_presets():
        if p.id == "2-8C":
            limits = tuple(
                dataclasses.replace(x, threshold_c=threshold_c) if x.id == "H1" else x for x in p.limits
            )
            p = dataclasses.replace(p, limits=limits, version=version)
        out.append(p)
    return tuple(out)


def test_every_preset_is_released_with_the_body_of_the_code(db: psycopg.Connection) -> None:
    rows = db.execute("SELECT id, version, body_sha256 FROM preset_versions ORDER BY id").fetchall()
    assert sorted((p.id, p.version) for p in list_presets()) == [(r[0], r[1]) for r in rows]
    for profile_id, version, digest in rows:
        assert digest == preset_versions.body_sha256(get_preset(profile_id))
        assert profiles.resolve(db, org=1, profile_id=profile_id, version=version) == get_preset(profile_id)


def test_an_edit_in_the_code_does_not_change_a_released_version(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preset_versions, "list_presets", lambda: _edited(9.0, 1))
    (drift,) = preset_versions.freeze(db)  # as the next migration run would do
    assert (drift.id, drift.version) == ("2-8C", 1) and drift.released_sha256 != drift.code_sha256
    in_force = profiles.resolve(db, org=1, profile_id="2-8C", version=1)
    assert next(x.threshold_c for x in in_force.limits if x.id == "H1") == 8.0


def test_a_new_preset_version_is_released_beside_the_old_one(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preset_versions, "list_presets", lambda: _edited(9.0, 2))
    assert preset_versions.freeze(db) == []
    latest = profiles.resolve(db, org=1, profile_id="2-8C")
    old = profiles.resolve(db, org=1, profile_id="2-8C", version=1)
    assert (latest.version, next(x.threshold_c for x in latest.limits if x.id == "H1")) == (2, 9.0)
    assert (old.version, next(x.threshold_c for x in old.limits if x.id == "H1")) == (1, 8.0)
    listed = {p.id: p.version for p in profiles.list_profiles(db, org=1)}
    assert listed["2-8C"] == 2


def test_the_application_role_cannot_rewrite_a_released_preset(db_dsn: str, db: psycopg.Connection) -> None:
    db.execute("ALTER ROLE coldchain_app LOGIN")
    with psycopg.connect(db_dsn.replace("postgres@", "coldchain_app@", 1), autocommit=True) as app:
        assert app.execute("SELECT count(*) FROM preset_versions").fetchone() == (len(list_presets()),)
        for statement in (
            "UPDATE preset_versions SET body = '{}'",
            "DELETE FROM preset_versions",
            "TRUNCATE preset_versions",
            "INSERT INTO preset_versions (id, version, body, body_sha256)"
            " VALUES ('x', 1, '{}', repeat('0', 64))",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
