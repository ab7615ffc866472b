"""The private servers of one installation (a data folder, `./.coldchain` by default), found
running or started: how every `coldchain` command reaches the database and broker that
`coldchain up` uses when no DATABASE_URL / MQTT_URL is set.

PostgreSQL says itself whether it runs: `postmaster.pid` in its data folder holds its pid and
port. Mosquitto keeps no such file, so the broker's URL is written to `mosquitto.url` in the data
folder while one started here runs. A command stops only the servers it started.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedded.mosquitto import MosquittoServer
from embedded.postgres import PostgresServer
from embedded.process import ServerError, free_port, port_is_free

__all__ = ["Installation", "RunningServer"]

POSTGRES_PORT = 54329  # the cluster's usual port, when free, so that its URL stays the same
MQTT_PORT = 1883


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server of the installation: where it listens, and `stop` when this process started it."""

    url: str
    port: int
    stop: Callable[[], None] | None = None

    @property
    def started_here(self) -> bool:
        return self.stop is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


class Installation:
    """The private PostgreSQL cluster (`<data_dir>/postgres`) and Mosquitto broker
    (`<data_dir>/mosquitto`) of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()

    def _cluster(self, port: int | None = None) -> PostgresServer:
        return PostgresServer(self.data_dir / "postgres", port=port)

    def running_postgres(self) -> tuple[int, int] | None:
        """(pid, port) of the cluster if it is running now: its postmaster.pid names a live process
        and a bound port."""
        pidfile = self._cluster(port=POSTGRES_PORT).data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return (pid, port) if _alive(pid) and not port_is_free(port) else None

    def running_postgres_port(self) -> int | None:
        running = self.running_postgres()
        return None if running is None else running[1]

    def postgres(self, *, announce: Callable[[str], None] | None = None) -> RunningServer:
        """The cluster's superuser URL (database `postgres`), starting the cluster if it is not running."""
        port = self.running_postgres_port()
        if port is not None:
            return RunningServer(url=f"postgresql://postgres@127.0.0.1:{port}/postgres", port=port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for port in (POSTGRES_PORT, free_port()):
            if not port_is_free(port):
                continue
            cluster = self._cluster(port=port)
            if announce is not None:
                announce(f"starting PostgreSQL in {cluster.data_dir} on port {port} ...")
            cluster.start()
            # Another server may have taken the port between the check and the bind: then ours
            # exited, and what answered on the port was not our cluster.
            if cluster.pid is not None:
                return RunningServer(url=cluster.dsn, port=port, stop=cluster.stop)
            cluster.stop()
        raise ServerError("PostgreSQL found no free port to listen on")

    @property
    def _broker_url_file(self) -> Path:
        return self.data_dir / "mosquitto.url"

    def running_broker_url(self) -> str | None:
        """The URL of the broker a command of this installation started, if it still listens."""
        try:
            url = self._broker_url_file.read_text().strip()
            port = int(url.rsplit(":", 1)[1])
        except (OSError, ValueError, IndexError):
            return None
        return url if not port_is_free(port) else None

    def broker(
        self,
        *,
        port: int | None = None,
        announce: Callable[[str], None] | None = None,
        accounts: Callable[[], dict[str, object]] | None = None,
        allow_anonymous: bool = False,
    ) -> RunningServer:
        """The broker's URL, starting it (on `port`, 1883 or a free one) if it is not running.
        `accounts` makes the dynamic-security document a broker started here begins with; a broker
        already running keeps the accounts it has."""
        url = self.running_broker_url()
        if url is not None:
            return RunningServer(url=url, port=int(url.rsplit(":", 1)[1]))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = port or (MQTT_PORT if port_is_free(MQTT_PORT) else free_port())
        broker = MosquittoServer(
            self.data_dir / "mosquitto",
            port=port,
            accounts=None if accounts is None else accounts(),
            allow_anonymous=allow_anonymous,
        )
        if announce is not None:
            announce(f"starting Mosquitto on port {port} ...")
        broker.start()
        self._broker_url_file.write_text(broker.url + "\n")

        def stop() -> None:
            with contextlib.suppress(FileNotFoundError):
                self._broker_url_file.unlink()
            broker.stop()

        return RunningServer(url=broker.url, port=port, stop=stop)
