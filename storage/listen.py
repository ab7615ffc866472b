"""The wake-ups between processes (PostgreSQL NOTIFY channels) and the loop every worker runs on them.

A channel is named once here and used by both sides, the NOTIFY and the LISTEN:

    rules           ingest, when it queues rule work          -> the rules runner
    alerts          an alert raised or moved (payload: id)    -> the notification planner
    notify_outbox   notifications due (planner, digests)      -> the outbox worker
    erp_outbox      ERP deliveries due (triggers, retries)    -> the ERP outbox worker
    device_config   a device's desired config changed         -> the config publisher

A NOTIFY is sent in the transaction of the change it announces, so it is delivered on commit and
never before the change is visible; the tables stay the truth, so a worker also polls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

import psycopg
from psycopg import sql

from coldchain.backoff import Backoff
from storage.db import connect

__all__ = ["Wakeup", "listen", "wake"]

log = logging.getLogger(__name__)


class Wakeup(StrEnum):
    """The NOTIFY channels."""

    RULES = "rules"
    ALERTS = "alerts"
    NOTIFY_OUTBOX = "notify_outbox"
    ERP_OUTBOX = "erp_outbox"
    DEVICE_CONFIG = "device_config"


def wake(conn: psycopg.Connection, channel: Wakeup, payload: str = "") -> None:
    """NOTIFY `channel`; delivered when the caller's transaction commits."""
    conn.execute("SELECT pg_notify(%s, %s)", (channel.value, payload))


def listen(
    dsn: str,
    channel: Wakeup,
    work: Callable[[psycopg.Connection, list[str]], object],
    *,
    stop: threading.Event,
    poll_s: float,
    name: str,
    on_connect: Callable[[psycopg.Connection], object] | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Call `work(conn, payloads)` at once and then on every wake-up of `channel`, until `stop`.

    A wake-up is a NOTIFY (with what else arrived meanwhile, so a burst is one call) or `poll_s`
    without one (payloads empty). `conn` is the worker's own connection (not autocommit); a
    second, autocommit connection listens. `on_connect(conn)` runs after every (re)connection,
    for the catching up a worker owes after time away. When the database goes away both
    connections are dropped and opened again after a jittered, growing delay.
    """
    backoff = backoff or Backoff()
    while not stop.is_set():
        try:
            with connect(dsn, autocommit=True) as listener, connect(dsn) as conn:
                listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel.value)))
                backoff.reset()
                if on_connect is not None:
                    on_connect(conn)
                payloads: list[str] = []
                while not stop.is_set():
                    work(conn, payloads)
                    payloads = [n.payload for n in listener.notifies(timeout=poll_s, stop_after=1)]
                    if payloads:
                        payloads += [n.payload for n in listener.notifies(timeout=0.0)]
        except psycopg.OperationalError as exc:
            delay = backoff.next()
            log.warning("%s lost the database (%s); retrying in %.1f s", name, exc, delay)
            stop.wait(delay)
