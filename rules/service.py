"""The rules service: evaluates every committed batch as soon as ingest signals it, and checks
for silent loggers on a schedule. Several can run at once; the queue and locks keep them apart.
Notifications are not its business: `notify` reads the alerts it raises (table and NOTIFY)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from coldchain.settings import Settings
from rules.device_health import check_batteries, check_data_loss, check_silence
from rules.runner import RunStats, drain
from storage.db import connect
from storage.listen import Wakeup, listen

log = logging.getLogger(__name__)


class RulesService:
    """Background threads: the runner (LISTEN rules + drain the queue) and the scheduler."""

    def __init__(
        self,
        *,
        dsn: str,
        settings: Settings | None = None,
        clock_ms: Callable[[], int] | None = None,
        poll_s: float = 1.0,
        bulk_s: float = 0.25,
    ) -> None:
        self._dsn = dsn
        self._settings = settings or Settings()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._poll_s = poll_s
        self._bulk_s = bulk_s  # quiet series are evaluated at least this often
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self.stats = RunStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rules-runner", daemon=True)
        self._thread.start()
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.check_silence_now,
            "interval",
            seconds=self._settings.rules_no_data_check_s,
            id="no-data-check",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    def check_silence_now(self) -> tuple[int, int]:
        """The scheduled device checks: silence, lost data, low battery; (raised, cleared) in all."""
        try:
            with connect(self._dsn) as conn:
                now = self._clock_ms()
                checks = [
                    check_silence(conn, now_ms=now),
                    check_data_loss(conn),
                    check_batteries(conn, now_ms=now),
                ]
                return sum(c[0] for c in checks), sum(c[1] for c in checks)
        except psycopg.OperationalError as exc:
            log.warning("device checks skipped, database unavailable: %s", exc)
            return 0, 0

    def _run(self) -> None:
        last_bulk = 0.0

        def reconnected(conn: psycopg.Connection) -> None:
            nonlocal last_bulk
            last_bulk = 0.0  # a full pass first: work may have queued up while we were away

        def evaluate(conn: psycopg.Connection, _payloads: list[str]) -> None:
            # Fast lane on every wake-up (ingest's NOTIFY, or the poll: the queue is the truth
            # either way); a full (bulk) pass at most every bulk_s.
            nonlocal last_bulk
            bulk = time.monotonic() - last_bulk >= self._bulk_s
            self.stats.merge(drain(conn, fast_lane=not bulk))
            if bulk:
                last_bulk = time.monotonic()

        listen(
            self._dsn,
            Wakeup.RULES,
            evaluate,
            stop=self._stop,
            poll_s=self._poll_s,
            name="rules runner",
            on_connect=reconnected,
        )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> RulesService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

