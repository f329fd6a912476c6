"""``retry_async``: await a coroutine function until it succeeds, with a ``Backoff``.

Kept apart from ``backoff.py`` so the delay policy stays free of I/O (the pool
core imports it); this is the async helper built on tenacity's ``AsyncRetrying``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import tenacity

from wsclient.backoff import Backoff

__all__ = ["default_should_retry", "retry_async"]

T = TypeVar("T")


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
