"""Reconnect delay policy: exponential, jittered, capped, reset after a success.

:class:`Backoff` is pure: it only produces numbers and never sleeps, and its
randomness comes from an injectable :class:`random.Random`, so the pool decides
*when* to wait and tests decide *what* the dice say. The exponential base is
tenacity's ``wait_exponential``; jitter is applied on top so that many clients
losing the same server never reconnect in lockstep, not even at the cap.

:func:`wsclient.retry.retry_async` drives an async call with a :class:`Backoff`;
it lives in its own module so this one stays free of I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import tenacity

__all__ = ["Backoff"]


# wait_exponential only reads ``attempt_number`` from the retry state, but its
# signature wants a real RetryCallState, which in turn wants a retrying object.
# One inert Retrying serves every Backoff; it is never run.
_INERT_RETRYING = tenacity.Retrying()


class Backoff:
    """Per-backend reconnect delays: exponential, jittered, capped; reset after a success."""

    def __init__(
        self,
        *,
        initial_delay: float = 1.0,
        multiplier: float = 1.6,
        jitter: float = 0.2,
        max_delay: float = 120.0,
        rng: random.Random | None = None,
    ) -> None:
        # Written as ``not (x > bound)`` so that NaN is rejected too.
        if not (initial_delay > 0 and math.isfinite(initial_delay)):
            raise ValueError(f"initial_delay must be a finite number > 0, got {initial_delay!r}")
        if not (multiplier >= 1 and math.isfinite(multiplier)):
            raise ValueError(f"multiplier must be a finite number >= 1, got {multiplier!r}")
        if not (0 <= jitter < 1):
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        # An infinite cap would let the base overflow to inf and the jitter to NaN.
        if not (max_delay >= initial_delay and math.isfinite(max_delay)):
            raise ValueError(
                f"max_delay must be finite and >= initial_delay ({initial_delay!r}), "
                f"got {max_delay!r}"
            )
        self._max_delay = max_delay
        self._jitter = jitter
        self._wait = tenacity.wait_exponential(
            multiplier=initial_delay, exp_base=multiplier, max=max_delay
        )
        self._state = tenacity.RetryCallState(_INERT_RETRYING, fn=None, args=(), kwargs={})
        # A private Random per instance (seeded from os.urandom) keeps backends
        # and processes decorrelated, and isolates tests from the global RNG.
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """Failures counted since the last :meth:`reset`."""
        return self._attempts

    def _base(self, steps: int) -> float:
        # tenacity numbers attempts from 1 and uses ``attempt_number - 1`` as
        # the exponent, so step n (0-based) is attempt n + 1.
        self._state.attempt_number = steps + 1
        return float(self._wait(self._state))

    def peek_base(self) -> float:
        """Un-jittered delay for the next attempt, without counting it (for status reports)."""
        return self._base(self._attempts)

    def next_delay(self, *, extra_steps: int = 0) -> float:
        """Return the delay before the next attempt and count one failure.

        ``extra_steps`` moves this one delay further up the curve, e.g. when
        the server closed with 1013 (try again later).
        """
        if extra_steps < 0:
            raise ValueError(f"extra_steps must be >= 0, got {extra_steps!r}")
        base = self._base(self._attempts + extra_steps)
        self._attempts += 1
        # The upper bound is clamped so the cap holds; the lower bound is not
        # raised, so delays keep a spread of ``jitter`` even at the cap.
        low = base * (1 - self._jitter)
        high = min(self._max_delay, base * (1 + self._jitter))
        return self._rng.uniform(low, high)

    def reset(self) -> None:
        """Start again from ``initial_delay`` (call after a successful connect)."""
        self._attempts = 0

    def delays(self) -> Iterator[float]:
        """Yield successive :meth:`next_delay` values, forever."""
        while True:
            yield self.next_delay()
