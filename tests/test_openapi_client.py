"""An integrator's check: a Python client generated from the served /openapi.json with
openapi-python-client registers a device and a shipment and reads the lot back, through a real
uvicorn server on a free port and a real PostgreSQL."""

from __future__ import annotations

import importlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from coldchain.access import Role
from coldchain.settings import Settings
from storage import auth
from tests.test_notify_outbox import ApiServer, free_port

GTIN = "09506000134352"


def _generate(doc_path: Path, out: Path) -> None:
    config = doc_path.parent / "client-config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run: the generated code is used as is
    subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(doc_path),
         "--meta", "none", "--output-path", str(out), "--config", str(config)],
        check=True, capture_output=True, text=True, timeout=120,
    )


def test_a_generated_client_registers_and_reads_a_lot(
    tmp_path: Path, db_dsn: str, db: psycopg.Connection
) -> None:
    token = auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="test")
    base = f"http://127.0.0.1:{free_port()}"
    with ApiServer(Settings(database_url=db_dsn, public_url=base), db_dsn):
        doc = tmp_path / "openapi.json"
        doc.write_bytes(httpx.get(f"{base}/openapi.json", timeout=10).content)
        _generate(doc, tmp_path / "coldchain_erp_client")
        sys.path.insert(0, str(tmp_path))
        try:
            client_pkg = importlib.import_module("coldchain_erp_client")
            models = importlib.import_module("coldchain_erp_client.models")
            devices = importlib.import_module("coldchain_erp_client.api.devices.create_device")
            shipments = importlib.import_module("coldchain_erp_client.api.shipments.create_shipment")
            lots = importlib.import_module("coldchain_erp_client.api.lots.get_lot")
        finally:
            sys.path.remove(str(tmp_path))

        with client_pkg.AuthenticatedClient(
            base_url=base, token=token, raise_on_unexpected_status=True
        ) as client:
            device = devices.sync(
                client=client, body=models.DeviceCreate(id="TRK-0042-L1", kind="usb-logger", interval_s=60)
            )
            assert isinstance(device, models.DeviceOut), device
            assert (device.id, device.interval_s, device.status) == ("TRK-0042-L1", 60, None)

            again = devices.sync(client=client, body=models.DeviceCreate(id="TRK-0042-L1"))
            assert isinstance(again, models.ErrorBody) and again.error == "ConflictError"

            start = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
            shipment = shipments.sync(
                client=client,
                body=models.ShipmentCreate(
                    id="SO-1001",
                    origin="Plant A",
                    destination="Hospital B",
                    profile="2-8C",
                    lots=[models.LotIn(gtin=GTIN, lot="A123", quantity=400)],
                    devices=[models.AssignmentIn(id="TRK-0042-L1", from_=start, to=None)],
                ),
            )
            assert isinstance(shipment, models.ShipmentOut), shipment
            assert shipment.profile == "2-8C" and shipment.devices[0].from_ == start

            lot = lots.sync(gtin=GTIN, lot="A123", client=client)
            assert isinstance(lot, models.LotOut), lot
            assert lot.shipments == ["SO-1001"] and lot.devices == ["TRK-0042-L1"]
            assert lot.digital_link == f"https://id.gs1.org/01/{GTIN}/10/A123"
            assert lot.excursions == [] and lot.stability_budget_s is None

            wrong = lots.sync(gtin="09506000134353", lot="A123", client=client)
            assert isinstance(wrong, models.ErrorBody) and wrong.field == "gtin"
