"""The rules service: evaluates every committed batch as soon as ingest signals it, and checks
for silent loggers on a schedule. Several can run at once; the queue and locks keep them apart."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from coldchain.settings import Settings
from rules.calibration_check import check_calibrations
from rules.device_health import check_batteries, check_data_loss, check_silence
from rules.notify.outbox import NotificationService, OutboxOptions
from rules.runner import RunStats, drain
from storage.db import connect

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
        notifications: bool = True,
        notify_options: OutboxOptions | None = None,
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
        # Notifications and escalation (rules.notify.outbox): planner + outbox worker threads,
        # and the escalation tick on this service's scheduler.
        self.notifications: NotificationService | None = (
            NotificationService(
                dsn=dsn, settings=self._settings, clock_ms=self._clock_ms, options=notify_options
            )
            if notifications
            else None
        )

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
        if self.notifications is not None:
            self.notifications.start()
            self._scheduler.add_job(
                self.notifications.tick,
                "interval",
                seconds=self.notifications.options.tick_s,
                id="escalation-tick",
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
                    check_calibrations(conn, today=datetime.fromtimestamp(now / 1000, UTC).date()),
                ]
                return sum(c[0] for c in checks), sum(c[1] for c in checks)
        except psycopg.OperationalError as exc:
            log.warning("device checks skipped, database unavailable: %s", exc)
            return 0, 0

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with connect(self._dsn, autocommit=True) as listener, connect(self._dsn) as worker:
                    listener.execute("LISTEN rules")
                    backoff = 0.5
                    last_bulk = 0.0
                    while not self._stop.is_set():
                        # Fast lane on every wake-up; a full (bulk) pass at most every bulk_s.
                        bulk = time.monotonic() - last_bulk >= self._bulk_s
                        self._merge(drain(worker, fast_lane=not bulk))
                        if bulk:
                            last_bulk = time.monotonic()
                        # Wake on ingest's NOTIFY, or poll anyway (a NOTIFY sent while we were
                        # draining is also seen here, and the queue is the truth either way).
                        for _ in listener.notifies(timeout=self._poll_s, stop_after=1):
                            pass
            except psycopg.OperationalError as exc:
                log.warning("rules runner lost the database (%s); retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 15.0)

    def _merge(self, done: RunStats) -> None:
        for name in RunStats.__slots__:
            setattr(self.stats, name, getattr(self.stats, name) + getattr(done, name))

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.notifications is not None:
            self.notifications.stop(timeout)

    def __enter__(self) -> RulesService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(settings: Settings, stop: threading.Event) -> None:
    """`coldchain rules`: run until `stop` is set."""
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set")
    with RulesService(dsn=settings.database_url, settings=settings):
        stop.wait()
