"""A registered logger as ingest sees it, read through ingest's own storage calls."""

from __future__ import annotations

import psycopg

from storage import device_state
from storage.device_state import KnownDevice

_YEAR_1_MS = -62_135_596_800_000
_YEAR_9999_MS = 253_402_300_799_000


def known_devices(conn: psycopg.Connection, device_ids: list[str]) -> dict[str, KnownDevice]:
    """The registered devices among `device_ids`, with every assignment window they have."""
    states = device_state.read_devices(conn, device_ids)
    windows = device_state.load_assignments(
        conn, [s.key for s in states.values()], start_ms=_YEAR_1_MS, end_ms=_YEAR_9999_MS
    )
    return {i: device_state.known_device(s, windows.get(s.key, ())) for i, s in states.items()}
