"""The demo fleet as data: 20 loggers on 5 shipments carrying 8 lots, with scripted excursions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot

_GTINS = ("09506000134352", "09506000134376", "09506000117843", "09506000134383")


@dataclass(frozen=True, slots=True)
class DemoLogger:
    device: Device
    shipment_id: str
    scenario: str
    seed: int


_ROUTES = (
    ("SO-DEMO-1001", "Plant Galway", "Hospital St. James, Dublin", "reefer-door-open"),
    ("SO-DEMO-1002", "Plant Galway", "Distribution Centre Cork", "reefer-compressor-failure"),
    ("SO-DEMO-1003", "3PL Rotterdam", "Clinic Utrecht", "reefer-ok"),
    ("SO-DEMO-1004", "3PL Rotterdam", "Pharmacy Leiden", "passive-shipper"),
    ("SO-DEMO-1005", "Cold room Basel", "Cold room Basel", "cold-room"),
)
# Lot index per shipment: some lots are split over two shipments, as real lots are.
_LOTS_OF = ((0, 1), (1, 2), (3, 4), (5, 6), (6, 7))
# A 72-hour stability budget outside 2-8 °C, as product stability data typically allows.
_LOTS = tuple(
    Lot(_GTINS[i % len(_GTINS)], f"DEMO-L{i + 1:02d}", stability_budget_s=72 * 3600) for i in range(8)
)


def demo_fleet(start: datetime) -> tuple[list[Shipment], list[DemoLogger]]:
    """The shipments (with lots and assignments from `start`) and their loggers."""
    shipments: list[Shipment] = []
    loggers: list[DemoLogger] = []
    for s, ((shipment_id, origin, destination, scenario), lot_ids) in enumerate(
        zip(_ROUTES, _LOTS_OF, strict=True)
    ):
        devices = []
        for n in range(4):
            device = Device(id=f"DEMO-{s + 1}-L{n + 1}", kind="simulated", interval_s=60)
            # The first logger of a shipment plays the scenario; the others ride along quietly,
            # as the loggers in other pallets of the same truck would.
            loggers.append(
                DemoLogger(device, shipment_id, scenario if n == 0 else _quiet(scenario), seed=s * 10 + n)
            )
            devices.append(DeviceAssignment(device.id, start))
        shipments.append(
            Shipment(
                id=shipment_id,
                origin=origin,
                destination=destination,
                profile="2-8C",
                lots=tuple(ShipmentLot(_LOTS[i], 100 * (i + 1)) for i in lot_ids),
                devices=tuple(devices),
            )
        )
    return shipments, loggers


def _quiet(scenario: str) -> str:
    return {"passive-shipper": "passive-shipper", "cold-room": "cold-room"}.get(scenario, "reefer-ok")
