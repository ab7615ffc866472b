"""The notification service: the planner and the outbox worker on their threads, and the escalation
tick on a scheduler. It meets the rules only through the alerts table and its NOTIFY.

Threads (all stop on `stop()`; each owns its database connection):

    notify-planner   LISTEN alerts: plans an alert the moment it opens or changes
    notify-worker    LISTEN notify_outbox (or poll): delivers due rows, sends on a thread pool
    (scheduler)      `tick()` every `tick_s`: the escalation sweep and digests

Time comes from `clock_ms`, so tests move the escalation clock by hand and call `tick()`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from coldchain.errors import ColdchainError
from coldchain.settings import Settings, load_settings
from notify.outbox import OutboxOptions, OutboxWorker
from notify.planner import Planner
from storage import notify_outbox
from storage.db import connect
from storage.listen import Wakeup, listen

__all__ = ["NotificationService", "main"]

log = logging.getLogger(__name__)

# Errors of one alert's planning that must not stop the planner (the next sweep retries it).
_PLAN_ERRORS = (ColdchainError, psycopg.DataError, psycopg.IntegrityError)


class NotificationService:
    """The planner and the worker on background threads, and `tick()` every `tick_s` on a scheduler."""

    def __init__(
        self,
        *,
        dsn: str,
        settings: Settings,
        clock_ms: Callable[[], int] | None = None,
        options: OutboxOptions | None = None,
        planner: Planner | None = None,
    ) -> None:
        self._dsn = dsn
        self._settings = settings
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.options = options or OutboxOptions()
        self.planner = planner or Planner()
        self.worker = OutboxWorker(settings=settings, clock_ms=self._clock_ms, options=self.options)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tick_lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock_ms() / 1000, tz=UTC)

    def start(self) -> NotificationService:
        for name, target in (("notify-planner", self._plan_loop), ("notify-worker", self._work_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.options.tick_s,
            id="escalation-tick",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()
        return self

    def tick(self) -> int:
        """The escalation tick: plan alerts whose next check is due, fold digests; rows enqueued."""
        with self._tick_lock:
            try:
                with connect(self._dsn) as conn:
                    now = self.now()
                    enqueued = sum(o.enqueued for o in self.planner.sweep(conn, now=now))
                    digests = notify_outbox.fold_digests(conn, now=now)
                    if digests:
                        with conn.transaction():
                            notify_outbox.wake_workers(conn)
                    return enqueued + digests
            except psycopg.OperationalError as exc:
                log.warning("escalation tick skipped, database unavailable: %s", exc)
                return 0

    def _plan_loop(self) -> None:
        def plan(conn: psycopg.Connection, payloads: list[str]) -> None:
            for alert_id in sorted({int(p) for p in payloads if p.isdigit()}):
                try:
                    self.planner.plan_alert(conn, alert_id, now=self.now())
                except _PLAN_ERRORS as exc:
                    log.error("planning alert %d failed: %s", alert_id, exc)

        listen(
            self._dsn,
            Wakeup.ALERTS,
            plan,
            stop=self._stop,
            poll_s=self.options.poll_s,
            name="notification planner",
            # whatever opened while we were away
            on_connect=lambda conn: self.planner.sweep(conn, now=self.now()),
        )

    def _work_loop(self) -> None:
        listen(
            self._dsn,
            Wakeup.NOTIFY_OUTBOX,
            lambda conn, _payloads: self.worker.deliver_due(conn, stop=self._stop),
            stop=self._stop,
            poll_s=self.options.poll_s,
            name="notification worker",
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking work, let the batch in flight finish and record, then close."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self.worker.close()

    def __enter__(self) -> NotificationService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m notify`: the planner, the worker and the tick, until SIGTERM."""
    parser = argparse.ArgumentParser(description="coldchain notification outbox worker")
    parser.add_argument("--grace-s", type=float, default=None, help="ambiguous-send grace period")
    parser.add_argument("--tick-s", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set")
    defaults = OutboxOptions()
    options = OutboxOptions(
        ambiguous_grace_s=args.grace_s or defaults.ambiguous_grace_s,
        tick_s=args.tick_s or defaults.tick_s,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with NotificationService(dsn=settings.database_url, settings=settings, options=options):
        print("notifier ready", flush=True)
        stop.wait()
    return 0
