"""Jittered exponential backoff: how long to wait before the next attempt at something that failed.

One arithmetic for every retry in the project (a worker reconnecting to PostgreSQL, the edge agent
reconnecting to the broker, a notification sent again), in the manner of psycopg_pool's
`ConnectionAttempt`: attempt n waits `min(maximum, initial * factor**n)`, of which the fraction
`jitter` is random ("equal jitter" at 0.5: never less than half), so that workers that lost the
same server do not all come back in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from coldchain.errors import ConfigurationError

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays for attempts 0, 1, 2...: `delay(n)` for a given attempt, `next()` and `reset()` to count.

    Not thread-safe: each loop that retries keeps its own.
    """

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.factor < 1 or not (0 <= self.jitter <= 1):
            raise ConfigurationError("backoff needs 0 < initial <= maximum, factor >= 1, 0 <= jitter <= 1")

    def delay(self, attempt: int) -> float:
        """The wait before attempt `attempt` + 1, in seconds."""
        cap = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return float(cap * (1 - self.jitter) + self.rng.uniform(0, cap * self.jitter))

    def next(self) -> float:
        """The wait after one more failure."""
        wait = self.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """It worked: the next failure starts from `initial` again."""
        self.attempt = 0
