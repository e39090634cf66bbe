"""Retry policy: which failures are retried, how long to wait, and when to give up.

One policy serves every transport: it looks only at the exception (``PrerankError.retryable`` and
``retry_after``), never at HTTP. Ranking is read-only, so a retried request can never apply twice.

- Retried: ``UnavailableError`` (503 ``no_model`` / ``not_ready`` / ``bucket_unavailable`` /
  ``version_unavailable`` / ``overloaded`` / ``shutting_down``, 429, and connection failures).
- The wait is the server's ``Retry-After`` when it sent one (never shorter), else exponential backoff
  capped at ``max_backoff``; ``jitter`` adds up to that fraction on top, so clients shed by the same
  overload do not come back in lockstep.
- A ``Retry-After`` longer than ``max_retry_after`` ends retrying (the server asked for more patience
  than the caller has), and so does a wait that would end past the call's ``budget``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import PrerankError


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries one call. ``RetryPolicy(max_attempts=1)`` never retries."""

    #: Attempts in all, the first one included.
    max_attempts: int = 4
    #: First wait when the server gave no ``Retry-After``, in seconds.
    initial_backoff: float = 0.05
    #: Each further wait without ``Retry-After`` is this many times the previous one.
    backoff_multiplier: float = 2.0
    #: Cap of the client's own backoff, in seconds.
    max_backoff: float = 1.0
    #: Longest ``Retry-After`` the client waits for; a longer one makes the call fail at once.
    max_retry_after: float = 5.0
    #: Seconds for the whole call: every attempt and every wait (``None``: no limit). Each attempt's
    #: timeout is cut to what is left of it.
    budget: float | None = 10.0
    #: Up to this fraction is added, at random, to each wait (0: exact waits).
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, found {self.max_attempts}")
        for name in ("initial_backoff", "max_backoff", "max_retry_after", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, found {getattr(self, name)}")
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier: must be >= 1, found {self.backoff_multiplier}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"budget: must be > 0 or None, found {self.budget}")


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class RetryEvent:
    """Passed to a client's ``on_retry`` hook before each wait."""

    #: The attempt that failed (1 = the first).
    attempt: int
    #: What it failed with.
    error: PrerankError
    #: Seconds the client waits now before the next attempt.
    delay: float


class Attempts:
    """The retry state of one call (used by the clients' retry loops)."""

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._deadline = None if policy.budget is None else clock() + policy.budget
        #: The attempt about to run or running (1-based).
        self.attempt = 1

    def timeout(self, per_attempt: float | None) -> float | None:
        """The timeout of the next attempt: ``per_attempt`` cut to what is left of the budget."""
        if self._deadline is None:
            return per_attempt
        left = max(0.001, self._deadline - self._clock())
        return left if per_attempt is None else min(per_attempt, left)

    def delay_after(self, error: PrerankError) -> float | None:
        """Seconds to wait before retrying after ``error``, or ``None`` to give up (raise it)."""
        p = self._policy
        error.attempts = self.attempt
        if not error.retryable or self.attempt >= p.max_attempts:
            return None
        if error.retry_after is not None:
            if error.retry_after > p.max_retry_after:
                return None
            delay = error.retry_after
        else:
            delay = min(p.max_backoff, p.initial_backoff * p.backoff_multiplier ** (self.attempt - 1))
        delay *= 1 + p.jitter * self._rng()
        if self._deadline is not None and self._clock() + delay >= self._deadline:
            return None
        self.attempt += 1
        return delay
