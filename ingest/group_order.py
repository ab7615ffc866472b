"""The ticket order two ingest writers keep, so that commits and PUBACKs leave in receive order.

MQTT (3.1.1 and 5, section 4.6) wants acknowledgements in the order the PUBLISHes arrived; with
two writers overlapping one group's COPY with the commit of the group before, the order has to
be kept by hand. Ticket n may start its copy stage once ticket n-1 is done or has its `batches`
rows in, and takes its turn (locks, commit, PUBACKs) only after n-1 is done.
"""

from __future__ import annotations

import threading

from coldchain.errors import ColdchainError

__all__ = ["GroupOrder", "GroupRestart", "WriteAborted"]


class GroupRestart(ColdchainError):
    """The group before failed after this one began: roll back and write again after it."""


class WriteAborted(ColdchainError):
    """stop() gave up draining: leave the group unacknowledged."""


class GroupOrder:
    """Receive-order tickets for groups written by several threads.

    Ticket n may start its copy stage once ticket n-1 is done or has its `batches` rows in (then a
    redelivered batch in both waits on n-1's transaction in PostgreSQL and is skipped); it may lock
    devices, commit and acknowledge only once n-1 is done. If n-1 fails after n began, n rolls
    back (n-1's retry may need the `batches` keys n inserted) and starts again after n-1 is done.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._done = -1  # every ticket up to this one is done
        self._deduped: set[int] = set()
        self._failed: set[int] = set()

    def wait_start(self, ticket: int, *, overlap: bool, abort: threading.Event) -> None:
        with self._cond:
            while not (
                self._done >= ticket - 1
                or (overlap and ticket - 1 in self._deduped and ticket - 1 not in self._failed)
            ):
                self._wait(abort)

    def wait_turn(self, ticket: int, *, abort: threading.Event) -> None:
        """Until ticket - 1 is done; raises GroupRestart when it fails meanwhile."""
        with self._cond:
            while self._done < ticket - 1:
                if ticket - 1 in self._failed:
                    raise GroupRestart
                self._wait(abort)

    def _wait(self, abort: threading.Event) -> None:
        if abort.is_set():
            raise WriteAborted
        self._cond.wait(0.2)

    def deduped(self, ticket: int) -> None:
        with self._cond:
            self._deduped.add(ticket)
            self._cond.notify_all()

    def failed(self, ticket: int) -> None:
        with self._cond:
            self._deduped.discard(ticket)
            self._failed.add(ticket)
            self._cond.notify_all()

    def done(self, ticket: int) -> None:
        with self._cond:
            self._done = max(self._done, ticket)
            self._deduped.discard(ticket)
            self._failed.discard(ticket)
            self._cond.notify_all()
