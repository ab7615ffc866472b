"""The TimescaleDB migration path, run against PGlite (PostgreSQL 17 in WebAssembly with TimescaleDB).

No TimescaleDB package exists for the build machines, so this checks the Timescale DDL at the SQL
level: the whole chain migrates, readings become a compressed, retained hypertable with a continuous
aggregate, and the policies run. PGlite crashes on COPY and serves one connection at a time, so
readings go in with plain INSERT and every connection here is closed before the next opens. Skipped
when node/npm are missing or the npm packages cannot be downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from storage.migrate import migrate

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent / "pglite"
CACHE_DIR = REPO / ".cache" / "pglite"
PACKAGE_FILES = ("package.json", "package-lock.json", "server.mjs")
INSTALL_TIMEOUT_S = 600
START_TIMEOUT_S = 60
_NETWORK_ERRORS = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
    r"network|socket hang up|proxy|self[- ]signed|certificate",
    re.IGNORECASE,
)


def _install() -> tuple[str, Path]:
    """node and the server script in the git-ignored cache, installing the npm packages once."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the TimescaleDB migration check needs them for PGlite")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    if major < 18:
        pytest.skip(f"node {version.strip()} is too old for PGlite (18 or newer needed)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once install once
        _install_locked(npm)
    return node, CACHE_DIR / "server.mjs"


def _install_locked(npm: str) -> None:
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        body = (PACKAGE_DIR / name).read_bytes()
        digest.update(body)
        target = CACHE_DIR / name
        if not target.exists() or target.read_bytes() != body:
            target.write_bytes(body)
    stamp = CACHE_DIR / ".installed"
    modules = CACHE_DIR / "node_modules" / "@electric-sql"
    if stamp.exists() and stamp.read_text() == digest.hexdigest() and modules.is_dir():
        return
    try:
        done = subprocess.run(
            [npm, "install", "--legacy-peer-deps", "--no-audit", "--no-fund"],
            cwd=CACHE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install of PGlite took over {INSTALL_TIMEOUT_S} s (no network?)")
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if _NETWORK_ERRORS.search(output):
            pytest.skip(f"npm install of PGlite failed for lack of network: {output.strip()[-500:]}")
        pytest.fail(f"npm install of PGlite failed:\n{output}")
    # The cache folder's copy of the lock file may have been rewritten by npm; the stamp keys the
    # checked-in files, so the next run installs only when they change.
    stamp.write_text(digest.hexdigest())


@pytest.fixture(scope="module")
def pglite_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PGlite socket server with TimescaleDB for this module, migrated once; stopped afterwards."""
    node, script = _install()
    log_path = tmp_path_factory.mktemp("pglite") / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [node, str(script)],
            cwd=script.parent,
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        port = _wait_ready(proc, log_path)
        yield f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(rb"PGLITE_READY (\d+)", log_path.read_bytes())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"PGlite server did not start:\n{log_path.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Closing stdin asks the server to stop; a server that does not is killed."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def applied(pglite_dsn: str) -> list[str]:
    return migrate(pglite_dsn)


@pytest.fixture
def conn(pglite_dsn: str, applied: list[str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pglite_dsn, autocommit=True, prepare_threshold=None) as connection:
        yield connection


def _insert(
    conn: psycopg.Connection[Any], *, device_key: int, times: list[datetime], temps: list[float]
) -> None:
    conn.execute(
        "INSERT INTO readings (org_id, device_key, seq, t, c)"
        " SELECT 1, %s, 1, t, c FROM unnest(%s::timestamptz[], %s::real[]) AS r(t, c)",
        (device_key, times, temps),
    )


def _job(conn: psycopg.Connection[Any], proc_name: str, relation: str) -> tuple[int, dict[str, Any]]:
    row = conn.execute(
        "SELECT job_id, config FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s",
        (proc_name, relation),
    ).fetchone()
    assert row is not None, f"no {proc_name} job on {relation}"
    return row[0], row[1]


def _chunk_compressed(conn: psycopg.Connection[Any], at: datetime) -> bool | None:
    row = conn.execute(
        "SELECT is_compressed FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'readings' AND range_start <= %s AND %s < range_end",
        (at, at),
    ).fetchone()
    return None if row is None else bool(row[0])


def test_whole_chain_takes_the_timescale_branch(pglite_dsn: str, applied: list[str]) -> None:
    assert applied == [
        "001_core",
        "010_ingest",
        "011_readings_storage.timescale",
        "020_rules",
        "030_notifications",
        "040_lot_budget",
        "070_master_data",
        "071_recalls",
    ]
    assert migrate(pglite_dsn) == []
    with psycopg.connect(pglite_dsn, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert conn.execute("SELECT to_regclass('readings_t_brin')").fetchone() == (None,)
        dims = conn.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_name = 'readings'"
        ).fetchall()
        assert dims == [("t", timedelta(days=1))]


def test_readings_is_a_compressed_hypertable(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT compression_enabled FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = 'public' AND hypertable_name = 'readings'"
    ).fetchone()
    assert row == (True,)
    settings = conn.execute(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc"
        " FROM timescaledb_information.compression_settings WHERE hypertable_name = 'readings'"
        " ORDER BY attname"
    ).fetchall()
    assert settings == [("device_key", 1, None, None), ("t", None, 1, True)]


def test_policies_are_registered(conn: psycopg.Connection[Any]) -> None:
    _, compression = _job(conn, "policy_compression", "readings")
    assert compression["compress_after"] == "7 days"
    _, retention = _job(conn, "policy_retention", "readings")
    assert retention["drop_after"] == "6 years"
    _, refresh = _job(conn, "policy_refresh_continuous_aggregate", "readings_5m")
    assert (refresh["start_offset"], refresh["end_offset"]) == ("400 days", "00:05:00")
    view = conn.execute(
        "SELECT hypertable_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        " WHERE view_name = 'readings_5m'"
    ).fetchone()
    assert view == ("readings", False)  # real-time: the newest minutes are in every query


def test_inserted_readings_roll_up_in_the_continuous_aggregate(conn: psycopg.Connection[Any]) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    times = [hour + timedelta(minutes=m) for m in range(12)]
    temps = [2.0 + m for m in range(12)]  # 2..13 °C, one a minute
    _insert(conn, device_key=101, times=times, temps=temps)

    job_id, _ = _job(conn, "policy_refresh_continuous_aggregate", "readings_5m")
    conn.execute("CALL run_job(%s)", (job_id,))

    buckets = conn.execute(
        "SELECT bucket, min_c, max_c, avg_c, n FROM readings_5m WHERE device_key = 101 ORDER BY bucket"
    ).fetchall()
    assert buckets == [
        (hour, 2.0, 6.0, 4.0, 5),
        (hour + timedelta(minutes=5), 7.0, 11.0, 9.0, 5),
        (hour + timedelta(minutes=10), 12.0, 13.0, 12.5, 2),
    ]
    hourly = conn.execute(
        "SELECT time_bucket(INTERVAL '1 hour', bucket), min(min_c), max(max_c), sum(n)"
        " FROM readings_5m WHERE device_key = 101 GROUP BY 1"
    ).fetchall()
    assert hourly == [(hour, 2.0, 13.0, 12)]


def test_policies_compress_old_chunks_and_drop_expired_ones(conn: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    recent, old, expired = now - timedelta(hours=2), now - timedelta(days=20), now - timedelta(days=7 * 366)
    _insert(conn, device_key=202, times=[recent, old, expired], temps=[5.0, 6.0, 7.0])

    for proc_name in ("policy_compression", "policy_retention"):
        job_id, _ = _job(conn, proc_name, "readings")
        conn.execute("CALL run_job(%s)", (job_id,))

    assert _chunk_compressed(conn, old) is True  # older than 7 days
    assert _chunk_compressed(conn, recent) is False
    left = conn.execute("SELECT t, c FROM readings WHERE device_key = 202 ORDER BY t").fetchall()
    assert left == [(old, 6.0), (recent, 5.0)]

    # A back-filled batch lands in a compressed chunk and is re-aggregated.
    _insert(conn, device_key=202, times=[old + timedelta(minutes=1)], temps=[9.5])
    conn.execute("CALL refresh_continuous_aggregate('readings_5m', %s, %s)", (old, old + timedelta(hours=1)))
    assert conn.execute(
        "SELECT n, max_c FROM readings_5m WHERE device_key = 202 AND bucket = %s", (old,)
    ).fetchone() == (2, 9.5)


def test_rules_read_each_series_within_its_own_bounds_across_compressed_chunks(
    conn: psycopg.Connection[Any],
) -> None:
    """The rules' read of new readings on a hypertable: one series continues from an hour ago,
    another starts over from a compressed chunk twenty days back; each gets exactly its range."""
    from storage.rules_store import readings_of_many

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old = now - timedelta(days=20)
    minutes = [timedelta(minutes=m) for m in range(0, 120, 10)]
    conn.execute(
        "INSERT INTO readings (org_id, device_key, shipment_key, seq, t, c)"
        " SELECT 1, d, s, 1, t, c FROM unnest(%s::int[], %s::int[], %s::timestamptz[], %s::real[])"
        " AS r(d, s, t, c)",
        (
            [303] * 24 + [304] * 24 + [305] * 12,
            [9] * 24 + [9] * 24 + [8] * 12,  # 305 on another shipment at the same times as 304
            [old + m for m in minutes]
            + [now - timedelta(hours=2) + m for m in minutes]
            + [old + m for m in minutes]
            + [now - timedelta(hours=2) + m for m in minutes]
            + [now - timedelta(hours=2) + m for m in minutes],
            [float(i) for i in range(60)],
        ),
    )
    job_id, _ = _job(conn, "policy_compression", "readings")
    conn.execute("CALL run_job(%s)", (job_id,))
    assert _chunk_compressed(conn, old) is True

    ms = lambda at: int(at.timestamp() * 1000)  # noqa: E731
    batch = readings_of_many(
        conn,
        after={(9, 303): None, (9, 304): ms(now - timedelta(hours=1)), (9, 305): None},
        until={(9, 303): ms(now), (9, 304): ms(now - timedelta(minutes=30)), (9, 305): ms(now)},
    )
    assert batch.ranges() == {(9, 303): (0, 24), (9, 304): (24, 27)}
    assert batch.temps_c.tolist() == [float(i) for i in range(24)] + [43.0, 44.0, 45.0]
    assert batch.times_ms[:12].tolist() == [ms(old + m) for m in minutes]
    assert batch.times_ms[24:].tolist() == [
        ms(now - timedelta(hours=1) + timedelta(minutes=m)) for m in (10, 20, 30)
    ]
