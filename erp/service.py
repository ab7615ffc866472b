"""The ERP outbox service: one thread that LISTENs on `erp_outbox` (the triggers of migration 110
NOTIFY it when an event is enqueued) and polls, delivering whatever is due. `coldchain up` and
`coldchain rules` run it beside the notification service."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg

from coldchain.settings import Settings
from erp.outbox import ErpOutboxOptions, ErpOutboxWorker
from storage.db import connect
from storage.listen import Wakeup, listen, wake

__all__ = ["ErpService"]

log = logging.getLogger(__name__)


class ErpService:
    def __init__(
        self,
        *,
        dsn: str,
        settings: Settings,
        options: ErpOutboxOptions | None = None,
        clock_ms: Callable[[], int] | None = None,
        verify_url: str | None = None,
    ) -> None:
        self._dsn = dsn
        self.options = options or ErpOutboxOptions()
        self.worker = ErpOutboxWorker(
            settings=settings, options=self.options, clock_ms=clock_ms, verify_url=verify_url
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="erp-outbox", daemon=True)

    def start(self) -> ErpService:
        self._thread.start()
        return self

    def _work(self, conn: psycopg.Connection, payloads: list[str]) -> None:
        try:
            self.worker.deliver_due(conn, stop=self._stop)
        except (psycopg.DataError, psycopg.IntegrityError):
            log.exception("ERP outbox: a batch failed; the next wake-up retries it")
            conn.rollback()

    def _run(self) -> None:
        listen(
            self._dsn,
            Wakeup.ERP_OUTBOX,
            self._work,
            stop=self._stop,
            poll_s=self.options.poll_s,
            name="ERP outbox",
        )

    def stop(self) -> None:
        self._stop.set()
        # Wake the listener now rather than at its next poll.
        with contextlib.suppress(psycopg.Error), connect(self._dsn, autocommit=True) as conn:
            wake(conn, Wakeup.ERP_OUTBOX, "stop")
        self._thread.join(timeout=30)

    def __enter__(self) -> ErpService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
