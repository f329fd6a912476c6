"""Reconnect delay policy: exponential, jittered, capped, reset after a success.

:class:`Backoff` is pure: it only produces numbers and never sleeps, and its
randomness comes from an injectable :class:`random.Random`, so the pool decides
*when* to wait and tests decide *what* the dice say. The exponential base is
tenacity's ``wait_exponential``; jitter is applied on top so that many clients
losing the same server never reconnect in lockstep, not even at the cap.

:func:`retry_async` wraps one (unpooled) connect in ``tenacity.AsyncRetrying``
driven by a :class:`Backoff`. Which errors are worth retrying is a single
replaceable predicate, :func:`default_should_retry`. Cancellation is never
retried nor swallowed.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
import tenacity

__all__ = ["Backoff", "default_should_retry", "retry_async"]

T = TypeVar("T")

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


def default_should_retry(exc: BaseException) -> bool:
    """Retry network-level failures: OSError, timeouts and aiohttp client errors."""
    # asyncio.TimeoutError is the builtin TimeoutError (an OSError) since 3.11;
    # it is listed to state the intent, not because it is needed.
    return isinstance(exc, OSError | asyncio.TimeoutError | aiohttp.ClientError)


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    should_retry: Callable[[BaseException], bool] = default_should_retry,
    max_attempts: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``fn()`` until it succeeds, sleeping ``backoff.next_delay()`` between tries.

    Gives up after ``max_attempts`` calls (``None``: never) or on an error that
    ``should_retry`` rejects, re-raising the last error itself. Resets
    ``backoff`` after a success.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1 or None, got {max_attempts!r}")

    def retryable(exc: BaseException) -> bool:
        # AsyncRetrying catches BaseException, CancelledError included. Only
        # Exception subclasses may ever be retried, whatever the predicate says,
        # so cancellation (and KeyboardInterrupt, SystemExit) propagates.
        return isinstance(exc, Exception) and should_retry(exc)

    # tenacity awaits only what inspect says is a coroutine function; a lambda or
    # partial returning an awaitable would be called but never awaited.
    async def attempt() -> T:
        return await fn()

    stop: tenacity.stop.stop_base = tenacity.stop_never
    if max_attempts is not None:
        stop = tenacity.stop_after_attempt(max_attempts)
    retrying = tenacity.AsyncRetrying(
        sleep=sleep,
        stop=stop,
        # Called once per retryable failure, including the last one, so
        # backoff.attempts equals the number of failures seen.
        wait=lambda _state: backoff.next_delay(),
        retry=tenacity.retry_if_exception(retryable),
        reraise=True,
    )
    result: T = await retrying(attempt)
    backoff.reset()
    return result
