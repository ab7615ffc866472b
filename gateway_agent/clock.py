"""Clocks: the system clock for production and a manual clock that tests and the simulator move."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time in epoch milliseconds and a sleep that respects the same notion of time."""

    def now_ms(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Time moves only when `advance` is called; sleepers wake when their time has come."""

    def __init__(self, start_ms: int = 1_795_000_000_000) -> None:
        self._now = start_ms
        self._changed: asyncio.Event | None = None

    def now_ms(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1000)
        if self._changed is not None:
            self._changed.set()

    async def sleep(self, seconds: float) -> None:
        wake = self._now + int(seconds * 1000)
        while self._now < wake:
            if self._changed is None:
                self._changed = asyncio.Event()
            event = self._changed
            await event.wait()
            if self._changed is event:
                self._changed = None
