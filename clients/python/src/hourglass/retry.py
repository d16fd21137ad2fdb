"""Retry policy: exponential backoff with full jitter, bounded by a per-call deadline."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a :class:`~hourglass.Client` retries answers that mean "not now".

    All times are in seconds. The n-th retry (n = 0, 1, ...) waits a random time between 0 and
    ``min(max_backoff, initial_backoff * multiplier ** n)`` ("full jitter"), at least what the
    server asked for (``retry_after``) unless the server named a new leader to go to, and never
    past the call's deadline: when the next try would start after it, the last error is raised.

    Attributes:
        deadline: Total time one call may take, retries included (the default of each call's
            ``timeout`` argument).
        attempt_timeout: Time limit of one attempt.
        initial_backoff: Cap of the first retry's wait.
        max_backoff: Largest cap of any retry's wait.
        multiplier: Growth of the cap per retry.
    """

    deadline: float = 20.0
    attempt_timeout: float = 12.0
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        for name in ("deadline", "attempt_timeout", "initial_backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RetryPolicy.{name} must be positive")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be at least 1")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("RetryPolicy.max_backoff must be at least initial_backoff")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (0-based), with full jitter."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(retry, 64))
        return (rng or _rng).uniform(0.0, cap)


_rng = random.Random()
