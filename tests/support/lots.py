"""Lots on legs, and loggers' readings written as ingest writes them, for the lot tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from storage import registry
from storage.readings import ReadingRows, copy_rows
from tests.support.devices import known_devices

GTIN = "09506000134352"
T0 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000


def add_leg(
    db: psycopg.Connection,
    shipment: str,
    devices: list[str],
    start_min: int,
    end_min: int | None,
    *,
    lot: str = "A1",
    budget_s: int | None = 72 * 3600,
) -> None:
    """A 2-8C shipment carrying the lot, with new loggers riding from `start_min` to `end_min`."""
    start = datetime.fromtimestamp((T0 + start_min * MIN) / 1000, tz=UTC)
    end = None if end_min is None else datetime.fromtimestamp((T0 + end_min * MIN) / 1000, tz=UTC)
    for d in devices:
        registry.create_device(db, org=1, device=Device(id=d), actor="t")
    registry.create_shipment(
        db,
        org=1,
        profile_version=1,
        actor="t",
        shipment=Shipment(
            id=shipment,
            profile="2-8C",
            lots=(ShipmentLot(Lot(GTIN, lot, stability_budget_s=budget_s)),),
            devices=tuple(DeviceAssignment(d, start, end) for d in devices),
        ),
    )


def write_readings(
    db: psycopg.Connection, device: str, minutes: np.ndarray, temps: np.ndarray, *, queue: bool = False
) -> None:
    """Readings at these minutes after T0, on the shipment the logger rode then; `queue` also
    queues them for the rules as ingest does."""
    dev = known_devices(db, [device])[device]
    t = T0 + minutes.astype(np.int64) * MIN
    shipment = dev.shipments_at(t)
    n = len(t)
    with db.transaction():
        copy_rows(
            db,
            ReadingRows(
                org_id=np.ones(n, np.int16),
                device_key=np.full(n, dev.key, np.int32),
                shipment_key=shipment,
                seq=np.zeros(n, np.int64),
                t_ms=t,
                celsius=temps.astype(np.float32),
                rh=np.full(n, np.nan, np.float32),
                flags=np.zeros(n, np.int16),
            ),
        )
        if queue:
            db.execute(
                "INSERT INTO rule_queue (org_id, device_key, shipment_key, from_t, to_t, min_c, max_c)"
                " VALUES (1, %s, %s, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0), %s, %s)",
                (dev.key, int(shipment[0]), int(t[0]), int(t[-1]), float(temps.min()), float(temps.max())),
            )
