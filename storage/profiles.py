"""Alarm profiles: built-in presets as released (frozen) versions, custom ones versioned in the
database with change control."""

from __future__ import annotations

import dataclasses

import psycopg
from psycopg.types.json import Jsonb

from coldchain.alarm_profile import AlarmProfile
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from coldchain.presets import get_preset, list_presets
from storage import preset_versions
from storage.audit import record


def _preset(profile_id: str) -> AlarmProfile | None:
    try:
        return get_preset(profile_id)
    except (KeyError, NotFoundError, ValidationError):
        return None


def resolve(
    conn: psycopg.Connection, *, org: int, profile_id: str, version: int | None = None
) -> AlarmProfile:
    """The profile in force (latest version unless one is named): custom first, then presets."""
    if version is None:  # the version in force: the latest approved one (drafts are not in force)
        row = conn.execute(
            "SELECT body FROM alarm_profiles WHERE org_id = %s AND id = %s AND state = 'approved'"
            " ORDER BY version DESC LIMIT 1",
            (org, profile_id),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT body FROM alarm_profiles WHERE org_id = %s AND id = %s AND version = %s",
            (org, profile_id, version),
        ).fetchone()
    if row is not None:
        return AlarmProfile.from_dict(row[0])
    frozen = preset_versions.released(conn, profile_id, version)  # a preset as released
    if frozen is not None:
        return frozen
    raise NotFoundError("alarm profile", profile_id if version is None else f"{profile_id} v{version}")


_versions: dict[tuple[int, str, int], AlarmProfile] = {}


def resolve_version(conn: psycopg.Connection, *, org: int, profile_id: str, version: int) -> AlarmProfile:
    """A named version; a stored version never changes, so each process reads it once."""
    key = (org, profile_id, version)
    found = _versions.get(key)
    if found is None:
        found = resolve(conn, org=org, profile_id=profile_id, version=version)
        if len(_versions) > 1000:
            _versions.clear()
        _versions[key] = found
    return found


def list_profiles(conn: psycopg.Connection, *, org: int) -> list[AlarmProfile]:
    """Every preset and the latest version of every custom profile of the organization."""
    rows = conn.execute(
        "SELECT DISTINCT ON (id) body FROM alarm_profiles WHERE org_id = %s AND state = 'approved'"
        " ORDER BY id, version DESC",
        (org,),
    ).fetchall()
    custom = [AlarmProfile.from_dict(r[0]) for r in rows]
    order = {p.id: i for i, p in enumerate(list_presets())}
    presets = sorted(preset_versions.latest_released(conn), key=lambda p: order.get(p.id, len(order)))
    return [*presets, *custom]


def save(conn: psycopg.Connection, *, org: int, profile: AlarmProfile, actor: str) -> AlarmProfile:
    """Store a new version of a custom profile; presets cannot be overwritten."""
    if _preset(profile.id) is not None:
        raise ConflictError(f"{profile.id!r} is a built-in preset; choose another id")
    with conn.transaction():
        row = conn.execute(
            "SELECT coalesce(max(version), 0) FROM alarm_profiles WHERE org_id = %s AND id = %s",
            (org, profile.id),
        ).fetchone()
        version = int(row[0]) + 1 if row else 1
        stored = dataclasses.replace(profile, version=version)
        conn.execute(
            "INSERT INTO alarm_profiles (org_id, id, version, body, created_by) VALUES (%s, %s, %s, %s, %s)",
            (org, stored.id, version, Jsonb(stored.to_dict()), actor),
        )
        record(
            conn,
            org_id=org,
            actor=actor,
            action="create",
            entity="alarm_profile",
            key=f"{stored.id} v{version}",
            new=stored.to_dict(),
        )
    return stored


FALLBACK_PROFILE = "2-8C"


def set_product_default(
    conn: psycopg.Connection, *, org: int, gtin: str, profile_id: str, actor: str
) -> None:
    """Make `profile_id` the default for shipments of this product (GTIN) that name none."""
    resolve(conn, org=org, profile_id=profile_id)  # it must exist
    with conn.transaction():
        old = conn.execute(
            "SELECT profile_id FROM product_profiles WHERE org_id = %s AND gtin = %s", (org, gtin)
        ).fetchone()
        conn.execute(
            "INSERT INTO product_profiles (org_id, gtin, profile_id) VALUES (%s, %s, %s)"
            " ON CONFLICT (org_id, gtin) DO UPDATE SET profile_id = EXCLUDED.profile_id, updated_at = now()",
            (org, gtin, profile_id),
        )
        record(
            conn,
            org_id=org,
            actor=actor,
            action="set_default_profile",
            entity="product",
            key=gtin,
            old={"profile": old[0]} if old else None,
            new={"profile": profile_id},
        )


def default_for(conn: psycopg.Connection, *, org: int, gtins: list[str]) -> str:
    """The profile for a shipment that names none: its first product's default, else 2-8 °C.

    Products with different defaults in one shipment are refused: the shipment must name one.
    """
    rows = conn.execute(
        "SELECT DISTINCT profile_id FROM product_profiles WHERE org_id = %s AND gtin = ANY(%s)", (org, gtins)
    ).fetchall()
    if len(rows) > 1:
        found = ", ".join(sorted(r[0] for r in rows))
        raise ValidationError(
            f"the shipment's products default to different profiles ({found}); name one", field="profile"
        )
    return str(rows[0][0]) if rows else FALLBACK_PROFILE
