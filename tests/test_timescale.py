"""The TimescaleDB path on the real extension: hypertable chunks under binary COPY with the
(device, seq) dedupe, late readings into compressed chunks, bucketed reads from the continuous
aggregates equal to date_bin on plain PostgreSQL, and the compression and retention jobs run.

Skipped where TimescaleDB is not installed (the rest of the suite then runs on plain PostgreSQL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from coldchain.domain import Device, DeviceAssignment, Lot, Shipment, ShipmentLot
from coldchain.wire import Topics
from embedded import PostgresServer
from ingest.core import AcceptanceBounds
from ingest.writer import GroupWriter
from rules.runner import drain
from storage import registry
from storage.migrate import migrate
from storage.readings import ReadingRows, bucket_source, copy_rows, lot_readings
from tests.support.devices import known_devices
from tests.support.ingest import make_batch, register, scalar
from tests.support.waiting import wait_until
from tests.test_ingest import _prepared

MIN = 60_000
HOUR = 60 * MIN


@pytest.fixture(autouse=True)
def _timescale_only(pg_server: PostgresServer) -> None:
    if not pg_server.timescale:
        pytest.skip("TimescaleDB is not installed here")


def _hour_floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _job(db: psycopg.Connection, proc: str, relation: str) -> tuple[int, dict[str, object]]:
    row = db.execute(
        "SELECT j.job_id, j.config FROM timescaledb_information.jobs j"
        " LEFT JOIN timescaledb_information.continuous_aggregates a"
        "   ON a.materialization_hypertable_name = j.hypertable_name"
        " WHERE j.proc_name = %s AND coalesce(a.view_name, j.hypertable_name) = %s",
        (proc, relation),
    ).fetchone()
    assert row is not None, (proc, relation)
    return int(row[0]), dict(row[1])


def _run_job(db: psycopg.Connection, job_id: int) -> None:
    db.execute("CALL run_job(%s)", (job_id,))


def _chunks(db: psycopg.Connection) -> list[tuple[datetime, datetime, bool]]:
    return [
        (a, b, bool(c))
        for a, b, c in db.execute(
            "SELECT range_start, range_end, is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'readings' ORDER BY range_start"
        ).fetchall()
    ]


def test_readings_is_a_compressed_retained_hypertable(db: psycopg.Connection) -> None:
    dims = db.execute(
        "SELECT column_name, time_interval FROM timescaledb_information.dimensions"
        " WHERE hypertable_name = 'readings'"
    ).fetchall()
    assert dims == [("t", timedelta(days=1))]
    segment = db.execute(
        "SELECT attname FROM timescaledb_information.compression_settings"
        " WHERE hypertable_name = 'readings' AND segmentby_column_index IS NOT NULL"
    ).fetchall()
    assert segment == [("device_key",)]
    _, compress = _job(db, "policy_compression", "readings")
    assert compress["compress_after"] == "7 days"
    _, retention = _job(db, "policy_retention", "readings")
    kept = db.execute("SELECT %s::interval", (retention["drop_after"],)).fetchone()
    assert kept is not None and kept[0] >= timedelta(days=5 * 365 + 1)  # EU GDP: at least 5 years
    views = {r[0] for r in db.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
    assert views == {"readings_5m", "readings_1h"}
    for view in views:
        _job(db, "policy_refresh_continuous_aggregate", view)


def test_copy_across_chunk_boundaries_keeps_the_batch_dedupe(
    db_dsn: str, db: psycopg.Connection, topics: Topics
) -> None:
    """One batch spanning three days lands in three chunks in one COPY; redelivered, it is skipped
    whole; a later batch that starts in the same chunk is stored."""
    start = _hour_floor(datetime.now(UTC)) - timedelta(days=4)
    register(db, ["TS-1"], since=start - timedelta(hours=1))
    writer = GroupWriter(limits=AcceptanceBounds())
    first = make_batch("TS-1", 1, n=72, start_ms=_ms(start), step_ms=HOUR)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert writer.write(conn, [_prepared(first, topics)]).batches == 1
        again = writer.write(conn, [_prepared(first, topics)])
        second = make_batch("TS-1", 2, n=24, start_ms=_ms(start) + 72 * HOUR, step_ms=HOUR)
        both = writer.write(conn, [_prepared(first, topics), _prepared(second, topics)])
    assert again.duplicates == 1 and again.batches == 0
    assert both.duplicates == 1 and both.batches == 1
    assert scalar(db, "SELECT count(*) FROM readings") == 96
    assert scalar(db, "SELECT count(*) FROM (SELECT DISTINCT seq, t FROM readings) x") == 96
    assert scalar(db, "SELECT count(DISTINCT tableoid) FROM readings WHERE seq = 1") >= 3
    assert len(_chunks(db)) >= 4
    assert scalar(db, "SELECT count(*) FROM readings WHERE shipment_key IS NOT NULL") == 96


def test_late_readings_into_a_compressed_chunk_are_stored_and_evaluated(
    db_dsn: str, db: psycopg.Connection, topics: Topics
) -> None:
    """A truck back from three weeks offline: its excursion hour lands in a chunk the compression
    policy has already compressed, is stored there and raises the alert as one pass would."""
    start = _hour_floor(datetime.now(UTC)) - timedelta(days=21)
    register(db, ["TS-2"], since=start)
    writer = GroupWriter(limits=AcceptanceBounds())
    t0 = _ms(start)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        writer.write(conn, [_prepared(make_batch("TS-2", 1, n=100, start_ms=t0), topics)])
        writer.write(conn, [_prepared(make_batch("TS-2", 3, n=95, start_ms=t0 + 145 * MIN), topics)])
        drain(conn)
        assert conn.execute("SELECT count(*) FROM alerts WHERE kind = 'single'").fetchone() == (0,)
        job_id, _ = _job(conn, "policy_compression", "readings")
        _run_job(conn, job_id)
        chunks = _chunks(conn)
        assert chunks and all(compressed for _, _, compressed in chunks)

        late = make_batch("TS-2", 2, n=45, start_ms=t0 + 100 * MIN, celsius=11.0)
        result = writer.write(conn, [_prepared(late, topics)])
        assert result.batches == 1 and result.late_batches == 1
        assert scalar(conn, "SELECT count(*) FROM readings WHERE seq = 2 AND c > 10") == 45
        drain(conn)
        alerts = conn.execute(
            "SELECT limit_id, state, round(peak_c::numeric, 1) FROM alerts WHERE kind = 'single'"
        ).fetchall()
        assert [(a, s) for a, s, _ in alerts] == [("H1", "resolved")]
        assert float(alerts[0][2]) == pytest.approx(11.4, abs=0.05)

        # the policy's next run compresses the chunk again; nothing is lost on the way
        _run_job(conn, job_id)
        assert all(compressed for _, _, compressed in _chunks(conn))
        assert scalar(conn, "SELECT count(*) FROM readings") == 240


def _lot_with_loggers(db: psycopg.Connection, start: datetime, *, loggers: int, hours: int) -> None:
    """A lot on two legs with `loggers` loggers each, one reading a minute for `hours` hours."""
    legs = [("LEG-1", start, start + timedelta(hours=hours // 2)),
            ("LEG-2", start + timedelta(hours=hours // 2), None)]
    rng = np.random.default_rng(7)
    for leg, (shipment, begin, end) in enumerate(legs):
        names = [f"L{leg}-{i}" for i in range(loggers)]
        for name in names:
            registry.create_device(db, org=1, device=Device(id=name), actor="t")
        registry.create_shipment(
            db, org=1, profile_version=1, actor="t",
            shipment=Shipment(
                id=shipment, lots=(ShipmentLot(Lot("09506000134352", "A1")),),
                devices=tuple(DeviceAssignment(n, begin, end) for n in names),
            ),
        )
        for name in names:
            dev = known_devices(db, [name])[name]
            t = _ms(start) + np.arange(hours * 60, dtype=np.int64) * MIN
            n = len(t)
            with db.transaction():
                copy_rows(db, ReadingRows(
                    org_id=np.ones(n, np.int16), device_key=np.full(n, dev.key, np.int32),
                    shipment_key=dev.shipments_at(t), seq=np.zeros(n, np.int64), t_ms=t,
                    celsius=np.round(5 + rng.normal(0, 1.3, n), 2).astype(np.float32),
                    rh=np.full(n, np.nan, np.float32), flags=np.zeros(n, np.int16),
                ))


def _lot_shipments(db: psycopg.Connection) -> list[int]:
    return [r[0] for r in db.execute("SELECT key FROM shipments ORDER BY key")]


def test_bucketed_lot_readings_equal_date_bin_on_plain(
    db: psycopg.Connection, database_on: Callable[[str], str]
) -> None:
    """The same readings on both engines: Timescale's continuous aggregates (materialised and in
    real time) give exactly the numbers of date_bin over the raw rows on plain PostgreSQL."""
    start = _hour_floor(datetime.now(UTC)) - timedelta(days=3)
    with psycopg.connect(database_on("plain"), autocommit=True) as plain:
        for conn in (db, plain):
            _lot_with_loggers(conn, start, loggers=3, hours=48)
        keys_ts, keys_plain = _lot_shipments(db), _lot_shipments(plain)
        end = start + timedelta(hours=48)

        def both(bucket: timedelta, lo: datetime, hi: datetime) -> tuple[list[dict[str, object]], ...]:
            got = tuple(
                lot_readings(conn, shipment_keys=keys, start=lo, end=hi, bucket=bucket)
                for conn, keys in ((db, keys_ts), (plain, keys_plain))
            )
            assert got[0], "no buckets"
            return got

        cases = [
            (timedelta(hours=1), start, end, "readings_1h"),
            (timedelta(hours=6), start + timedelta(hours=3), end, "readings_1h"),
            (timedelta(minutes=15), start + timedelta(minutes=5), end, "readings_5m"),
            (timedelta(minutes=7), start, end, None),
        ]
        for bucket, lo, hi, source in cases:
            assert bucket_source(db, bucket=bucket, start=lo, end=hi) == source
            assert bucket_source(plain, bucket=bucket, start=lo, end=hi) is None
        for refresh in (False, True):
            if refresh:  # materialise what real-time aggregation computed so far
                for view in ("readings_5m", "readings_1h"):
                    db.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
                assert scalar(db, "SELECT count(*) FROM readings_1h") > 0
            for bucket, lo, hi, _ in cases:
                ts_rows, plain_rows = both(bucket, lo, hi)
                assert ts_rows == plain_rows, bucket
        hourly = both(timedelta(hours=1), start, end)[0]
        assert len(hourly) == 48 * 3 and sum(int(str(b["n"])) for b in hourly) == 48 * 60 * 3


def test_a_logger_changing_shipment_within_a_bucket_is_one_bucket_on_both_engines(
    db: psycopg.Connection, database_on: Callable[[str], str]
) -> None:
    """A logger handed from one of the lot's shipments to another in the middle of an hour has
    two rollup rows for that hour (one per shipment): the hourly read of the hourly rollup must
    still give one bucket with every reading counted, as date_bin does on plain PostgreSQL,
    also when the limit falls between the two rows."""
    start = _hour_floor(datetime.now(UTC)) - timedelta(days=1)
    handover = start + timedelta(hours=1, minutes=32)
    end = start + timedelta(hours=3)
    with psycopg.connect(database_on("plain"), autocommit=True) as plain:
        keys = {}
        for conn in (db, plain):
            registry.create_device(conn, org=1, device=Device(id="MOVER"), actor="t")
            for shipment, begin, until in (("HAND-1", start, handover), ("HAND-2", handover, None)):
                registry.create_shipment(
                    conn, org=1, profile_version=1, actor="t",
                    shipment=Shipment(
                        id=shipment, lots=(ShipmentLot(Lot("09506000134352", "H1")),),
                        devices=(DeviceAssignment("MOVER", begin, until),),
                    ),
                )
            dev = known_devices(conn, ["MOVER"])["MOVER"]
            t = _ms(start) + np.arange(3 * 60, dtype=np.int64) * MIN
            n = len(t)
            with conn.transaction():
                copy_rows(conn, ReadingRows(
                    org_id=np.ones(n, np.int16), device_key=np.full(n, dev.key, np.int32),
                    shipment_key=dev.shipments_at(t), seq=np.zeros(n, np.int64), t_ms=t,
                    celsius=np.round(5 + np.sin(np.arange(n) / 7.0), 2).astype(np.float32),
                    rh=np.full(n, np.nan, np.float32), flags=np.zeros(n, np.int16),
                ))
            keys[conn] = [r[0] for r in conn.execute("SELECT key FROM shipments ORDER BY key")]
        for refresh in (False, True):
            if refresh:
                for view in ("readings_5m", "readings_1h"):
                    db.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
            for bucket in (timedelta(hours=1), timedelta(minutes=5)):
                ts_rows, plain_rows = (
                    lot_readings(conn, shipment_keys=keys[conn], start=start, end=end, bucket=bucket)
                    for conn in (db, plain)
                )
                assert bucket_source(db, bucket=bucket, start=start, end=end) is not None
                assert ts_rows == plain_rows, (bucket, refresh)
                assert len(ts_rows) == 3 * 3600 // int(bucket.total_seconds())
                assert sum(int(str(r["n"])) for r in ts_rows) == 180
            hourly = lot_readings(db, shipment_keys=keys[db], start=start, end=end,
                                  bucket=timedelta(hours=1))
            assert [r["n"] for r in hourly] == [60, 60, 60]
            cut = lot_readings(db, shipment_keys=keys[db], start=start, end=end,
                               bucket=timedelta(hours=1), limit=2)
            assert cut == hourly[:2]


def test_compression_and_retention_jobs_run(db: psycopg.Connection) -> None:
    """The policies, run as the scheduler runs them: chunks older than 7 days are compressed and
    queries still read them; chunks older than the retention interval (6 years) are dropped,
    and a 5-year-old chunk is kept."""
    registry.create_device(db, org=1, device=Device(id="TS-R"), actor="t")
    dev = known_devices(db, ["TS-R"])["TS-R"]
    now = _hour_floor(datetime.now(UTC))
    ages = [timedelta(days=d) for d in (7 * 365, 5 * 365, 10, 1)]
    for age in ages:
        t = _ms(now - age) + np.arange(60, dtype=np.int64) * MIN
        with db.transaction():
            copy_rows(db, ReadingRows(
                org_id=np.ones(60, np.int16), device_key=np.full(60, dev.key, np.int32),
                shipment_key=np.full(60, -1, np.int32), seq=np.zeros(60, np.int64), t_ms=t,
                celsius=np.full(60, 5.0, np.float32), rh=np.full(60, np.nan, np.float32),
                flags=np.zeros(60, np.int16),
            ))
    assert len(_chunks(db)) == 4 and not any(c for _, _, c in _chunks(db))

    compress_id, _ = _job(db, "policy_compression", "readings")
    _run_job(db, compress_id)
    by_age = {round((now - a).total_seconds() / 86400): c for a, _, c in _chunks(db)}
    assert sorted(by_age.values()) == [False, True, True, True]
    assert by_age[min(by_age)] is False  # yesterday's chunk is still being written

    retention_id, _ = _job(db, "policy_retention", "readings")
    _run_job(db, retention_id)
    left = _chunks(db)
    assert len(left) == 3
    oldest = db.execute("SELECT min(t) FROM readings").fetchone()
    assert oldest is not None and now - oldest[0] < timedelta(days=6 * 365)
    assert now - oldest[0] >= timedelta(days=5 * 365 - 1)
    assert scalar(db, "SELECT count(*) FROM readings") == 180


def test_the_scheduler_runs_the_policies_in_the_background(pg_server: PostgresServer) -> None:
    """What production relies on: on a database migrated as `coldchain up` migrates it, the
    background scheduler (not a test) runs the policies and they succeed (the source build
    carries a patch for this; see scripts/timescaledb-patches)."""
    name = f"sched_{os.getpid()}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        migrate(pg_server.dsn_for(name))
        with psycopg.connect(pg_server.dsn_for(name), autocommit=True) as db:
            jobs = [
                _job(db, "policy_compression", "readings")[0],
                _job(db, "policy_refresh_continuous_aggregate", "readings_5m")[0],
                _job(db, "policy_refresh_continuous_aggregate", "readings_1h")[0],
                _job(db, "policy_retention", "readings")[0],
            ]

            def succeeded() -> set[int]:
                return {int(r[0]) for r in db.execute(
                    "SELECT job_id FROM timescaledb_information.job_stats"
                    " WHERE job_id = ANY(%s) AND total_successes > 0", (jobs,)
                )}

            # a new policy runs once right away, then on its schedule
            assert wait_until(lambda: succeeded() == set(jobs), timeout=120), succeeded()
            errors = db.execute(
                "SELECT job_id, err_message FROM timescaledb_information.job_errors WHERE job_id = ANY(%s)",
                (jobs,),
            ).fetchall()
            assert errors == []
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_embedded_cluster_preloads_timescaledb(db: psycopg.Connection) -> None:
    settings = db.execute(
        "SELECT current_setting('shared_preload_libraries'),"
        " current_setting('timescaledb.telemetry_level', true)"
    ).fetchone()
    assert settings == ("timescaledb", "off")  # a build without telemetry keeps it as a placeholder
    version = db.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert version is not None and version[0].startswith("2.")
