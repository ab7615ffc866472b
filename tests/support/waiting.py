"""Waiting for what another thread or process will do: poll, never sleep a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 60.0, every: float = 0.05, what: str = "condition"
) -> T:
    """Poll until `predicate()` is truthy and return it; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    value = predicate()
    if value:
        return value
    raise AssertionError(f"timed out waiting for {what}")


def wait_until(
    check: Callable[[], bool], *, timeout: float = 60.0, every: float = 0.05, what: str | None = None
) -> bool:
    """Poll `check` until it holds. Without `what` the caller asserts the result (never the time it
    took); with `what` a timeout is an AssertionError that names it."""
    if what is not None:
        return bool(wait_for(check, timeout=timeout, every=every, what=what))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()
