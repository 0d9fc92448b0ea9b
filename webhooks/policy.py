"""Retry policy as data: when to try a delivery again, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["DEFAULT_SCHEDULE", "RetryPolicy"]

#: seconds to wait before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (~27.6 h)
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential-ish backoff with jitter, capped ``Retry-After``.

    After the first attempt there are ``len(schedule)`` retries; a delivery
    still failing after the last one is dead. ``jitter`` spreads each wait by
    up to that fraction either way, so failures that happened together do not
    retry together.
    """

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    max_retry_after: float = 86_400.0

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def next_delay(
        self, attempts: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the next attempt after ``attempts`` tries, or ``None``: give up.

        A ``Retry-After`` from the endpoint wins over the schedule (capped at
        ``max_retry_after``) but never adds attempts beyond it.
        """
        if attempts >= self.max_attempts:
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = self.schedule[attempts - 1]
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))
