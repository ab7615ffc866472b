"""A private PostgreSQL cluster in a folder of ours, on a port of ours, run by the system's binaries."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from embedded.process import (
    ServerError,
    chown_tree,
    free_port,
    reachable_by,
    service_user,
    wait_for_port,
)

log = logging.getLogger(__name__)


def find_bindir() -> Path:
    """The newest PostgreSQL server binaries on this machine (Debian keeps them per version)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ServerError("PostgreSQL server binaries not found: `apt-get install postgresql`")


def timescaledb_installed(bindir: Path) -> bool:
    """True when the TimescaleDB extension is installed for the server in `bindir`.

    Debian keeps the library in /usr/lib/postgresql/N/lib and the control file in
    /usr/share/postgresql/N/extension; a source install under a prefix keeps both below it.
    """
    prefix = bindir.parent
    libs = [prefix / "lib", prefix / "lib" / "postgresql"]
    shares = [
        prefix / "share" / "extension",
        prefix / "share" / "postgresql" / "extension",
        Path("/usr/share/postgresql") / prefix.name / "extension",
    ]
    return any((d / "timescaledb.so").exists() for d in libs) and any(
        (d / "timescaledb.control").exists() for d in shares
    )


TIMESCALEDB_SETTINGS = {
    "shared_preload_libraries": "timescaledb",
    "timescaledb.telemetry_level": "off",
    # one scheduler per database plus its jobs, beside PostgreSQL's own parallel workers
    "max_worker_processes": "32",
    "timescaledb.max_background_workers": "16",
}


class PostgresServer:
    """Owns one cluster: initdb on first use, start, stop. Reuses the data on a second start.

    When we run as root the cluster belongs to the `postgres` user (initdb refuses root); if that
    user cannot reach `data_dir`, the cluster lives in a stable folder under /var/tmp instead.
    `timescale=None` preloads TimescaleDB when it is installed; True requires it; False leaves it out.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        fast_and_unsafe: bool = False,
        settings: dict[str, str] | None = None,
        timescale: bool | None = None,
    ) -> None:
        self._owned_tmp = data_dir is None
        self.user = service_user("postgres")
        requested = data_dir or Path(tempfile.mkdtemp(prefix="coldchain-pg-"))
        self.data_dir = self._placement(requested.resolve())
        self.port = port or free_port()
        self.fast_and_unsafe = fast_and_unsafe
        self.extra_settings = settings or {}
        self.bindir = find_bindir()
        installed = timescaledb_installed(self.bindir)
        if timescale and not installed:
            raise ServerError(
                f"TimescaleDB is not installed for {self.bindir}: build it with"
                " `TIMESCALEDB_SOURCE=<archive> make setup` or install Timescale's package"
            )
        self.timescale = installed if timescale is None else timescale
        self._proc: subprocess.Popen[bytes] | None = None

    def _placement(self, requested: Path) -> Path:
        if self.user is None:
            return requested
        requested.parent.mkdir(parents=True, exist_ok=True)
        if reachable_by(self.user, requested.parent):
            return requested
        digest = hashlib.sha256(str(requested).encode()).hexdigest()[:12]
        moved = Path("/var/tmp") / f"coldchain-pg-{digest}"
        log.info("postgres cannot reach %s; keeping the cluster in %s", requested, moved)
        return moved

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        user = self.user.pw_name if self.user else None
        return subprocess.run(args, user=user, check=False, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]

    def initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if self.user is not None:
            chown_tree(self.data_dir, self.user)
        args = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        if self.fast_and_unsafe:
            args.append("--no-sync")
        done = self._run(args)
        if done.returncode != 0:
            raise ServerError(f"initdb failed: {done.stderr.decode(errors='replace')[-800:]}")

    def start(self) -> PostgresServer:
        self.initdb()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            "log_min_messages": "warning",
            "autovacuum_naptime": "5s",  # BRIN summaries of new readings follow within seconds
            "logging_collector": "off",
        }
        if self.timescale:
            options.update(TIMESCALEDB_SETTINGS)
        if self.fast_and_unsafe:
            options.update({"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"})
        options.update(self.extra_settings)
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                args,
                user=self.user.pw_name if self.user else None,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=60, proc=self._proc)
            self._wait_ready()
        except ServerError:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            self.stop()
            raise ServerError(f"PostgreSQL did not start: {tail}") from None
        return self

    def _wait_ready(self) -> None:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise ServerError("PostgreSQL did not become ready")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server: 'fast' (clean) or 'immediate' (as after a crash; recovery on start)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, mode: str = "fast") -> None:
        self.stop(mode=mode)
        self.start()

    def destroy(self) -> None:
        self.stop()
        if self._owned_tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
            log_path.unlink(missing_ok=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
