"""Storage against a real PostgreSQL: migrations, registry, audit chain, tokens, COPY writer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from coldchain.access import Role
from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from coldchain.errors import AuthError, ConflictError, NotFoundError
from storage import audit, auth, registry
from storage.migrate import migrate
from storage.readings import ReadingRows, copy_rows
from tests.support.devices import known_devices
from tests.support.waiting import wait_until

GTIN = "09506000134352"


def _shipment(devices: tuple[DeviceAssignment, ...] = ()) -> Shipment:
    return Shipment(
        id="SO-1001",
        lots=(ShipmentLot(Lot(GTIN, "A123"), 400),),
        devices=devices,
    )


def test_migrate_is_idempotent(db_dsn: str) -> None:
    assert migrate(db_dsn) == []


def test_migrate_runs_again_a_step_that_lost_a_race_on_a_catalog_row(db_dsn: str) -> None:
    """Another session's uncommitted GRANT on a table holds its pg_class row; the migration's own
    GRANT waits for it and, once it commits, fails with "tuple concurrently updated" (a race an
    operator's console or a TimescaleDB job can start). The step is run again and the run ends."""
    outcome: list[object] = []
    with psycopg.connect(db_dsn) as other, psycopg.connect(db_dsn, autocommit=True) as watcher:
        other.execute("GRANT SELECT ON devices TO coldchain_app")  # in an open transaction
        runner = threading.Thread(target=lambda: outcome.append(_migrate_or_error(db_dsn)))
        runner.start()

        def waiting_for_it() -> bool:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE 'GRANT%%'"
            ).fetchone()
            return bool(row and row[0])

        assert wait_until(waiting_for_it, timeout=30)
        other.commit()
    runner.join(timeout=60)
    assert outcome == [[]]  # nothing new applied, and no error
    with psycopg.connect(db_dsn) as conn:
        granted = conn.execute(
            "SELECT has_table_privilege('coldchain_app', 'shipments', 'INSERT'),"
            " has_table_privilege('coldchain_app', 'audit_trail', 'UPDATE')"
        ).fetchone()
    assert granted == (True, False)


def _migrate_or_error(dsn: str) -> object:
    try:
        return migrate(dsn)
    except psycopg.Error as exc:
        return exc


def test_registry_round_trip_and_overlap_refused(db: psycopg.Connection) -> None:
    registry.create_device(db, org=1, device=Device(id="TRK-1"), actor="t")
    with pytest.raises(ConflictError):
        registry.create_device(db, org=1, device=Device(id="TRK-1"), actor="t")
    start = datetime(2026, 11, 24, 8, tzinfo=UTC)
    registry.create_shipment(
        db, org=1, shipment=_shipment((DeviceAssignment("TRK-1", start),)), profile_version=1, actor="t"
    )
    got = registry.get_shipment(db, org=1, shipment_id="SO-1001")
    assert got.shipment.lots[0].lot.lot == "A123"
    assert got.shipment.devices[0].device_id == "TRK-1"
    other = Shipment(id="SO-1002", devices=(DeviceAssignment("TRK-1", start),))
    with pytest.raises(ConflictError, match="already assigned"):
        registry.create_shipment(db, org=1, shipment=other, profile_version=1, actor="t")
    lot = registry.get_lot(db, org=1, gtin=GTIN, lot="A123")
    assert lot.shipments == ("SO-1001",) and lot.devices == ("TRK-1",)


def test_tenant_isolation(db: psycopg.Connection) -> None:
    other = auth.create_organization(db, "acme", "Acme Pharma")
    registry.create_device(db, org=other, device=Device(id="ACME-1"), actor="t")
    with pytest.raises(NotFoundError):
        registry.get_device(db, org=1, device_id="ACME-1")
    assert [d.device.id for d in registry.list_devices(db, org=1)] == []


def test_tokens_are_hashed_and_revocable(db: psycopg.Connection) -> None:
    token = auth.create_token(db, org=1, name="erp", role=Role.ERP, actor="t")
    stored = db.execute("SELECT token_hash FROM api_tokens").fetchone()
    assert stored is not None and token.encode() not in bytes(stored[0])
    assert auth.authenticate(db, token).role is Role.ERP
    auth.revoke_token(db, org=1, name="erp", actor="t")
    with pytest.raises(AuthError):
        auth.authenticate(db, token)


def test_audit_chain_detects_tampering(db: psycopg.Connection) -> None:
    registry.create_device(db, org=1, device=Device(id="A"), actor="alice")
    registry.create_device(db, org=1, device=Device(id="B"), actor="bob")
    assert audit.verify_chain(db, 1) == (True, None)
    with pytest.raises(psycopg.errors.RaiseException):
        db.execute("UPDATE audit_trail SET actor = 'mallory'")
    # A superuser can bypass the trigger; the chain still shows where.
    db.execute("ALTER TABLE audit_trail DISABLE TRIGGER audit_trail_no_update")
    first = db.execute("SELECT min(id) FROM audit_trail").fetchone()
    assert first is not None
    db.execute("UPDATE audit_trail SET actor = 'mallory' WHERE id = %s", (first[0],))
    assert audit.verify_chain(db, 1) == (False, first[0])


def test_copy_writer_and_device_directory(db: psycopg.Connection) -> None:
    registry.create_device(db, org=1, device=Device(id="TRK-1"), actor="t")
    start = datetime(2026, 11, 24, 8, tzinfo=UTC)
    registry.create_shipment(
        db, org=1, shipment=_shipment((DeviceAssignment("TRK-1", start),)), profile_version=1, actor="t"
    )
    known = known_devices(db, ["TRK-1", "nobody"])
    assert set(known) == {"TRK-1"}
    dev = known["TRK-1"]
    t = np.array([start.timestamp() * 1000 - 60_000, start.timestamp() * 1000], dtype=np.int64)
    shipments = dev.shipments_at(t)
    assert shipments[0] == -1 and shipments[1] == dev.assignments[0].shipment_key
    rows = ReadingRows(
        org_id=np.full(2, 1, np.int16),
        device_key=np.full(2, dev.key, np.int32),
        shipment_key=shipments,
        seq=np.zeros(2, np.int64),
        t_ms=t,
        celsius=np.array([4.5, 5.25], np.float32),
        rh=np.array([np.nan, 61.5], np.float32),
        flags=np.zeros(2, np.int16),
    )
    with db.transaction():
        copy_rows(db, rows)
    got = db.execute("SELECT shipment_key, t, c, rh FROM readings ORDER BY t").fetchall()
    assert got[0][0] is None and got[0][3] is None
    assert got[1][0] == dev.assignments[0].shipment_key and got[1][2] == 5.25 and got[1][3] == 61.5
    assert got[1][1] == start


def test_a_port_in_time_wait_is_free_a_listening_one_is_not() -> None:
    import socket

    from embedded.process import free_port, port_is_free

    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        assert not port_is_free(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: its end lingers in TIME_WAIT
            client.recv(1)
    assert port_is_free(port)
