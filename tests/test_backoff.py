"""The one backoff: attempt n waits min(maximum, initial * factor**n), of which `jitter` is random."""

from __future__ import annotations

import random

import pytest

from coldchain.backoff import Backoff
from coldchain.errors import ConfigurationError


def test_delays_grow_then_cap_and_never_fall_below_the_unjittered_share() -> None:
    backoff = Backoff(initial=0.5, maximum=15.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    for n, delay in enumerate(delays):
        cap = min(15.0, 0.5 * 2**n)
        assert cap / 2 <= delay <= cap
    assert all(7.5 <= d <= 15.0 for d in delays[5:])
    assert len(set(delays[5:])) > 1  # jittered: not all the same


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.0)
    assert [backoff.next() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_the_outbox_retry_schedule_is_the_documented_one() -> None:
    # docs/notifications.md: min(backoff_max_s, backoff_base_s * 2^(attempts-1)), half to all of it
    retry = Backoff(initial=5.0, maximum=900.0, jitter=0.5, rng=random.Random(1))
    for attempts in range(1, 12):
        base = min(900.0, 5.0 * 2 ** (attempts - 1))
        assert base / 2 <= retry.delay(attempts - 1) <= base


@pytest.mark.parametrize(
    "bad", [{"initial": 0.0}, {"initial": 2.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.5}]
)
def test_nonsense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        Backoff(**bad)  # type: ignore[arg-type]
