"""``ResolverRunner``: asks a resolver over time and feeds the pool's ``set_backends``.

One task per pool. Each resolution is bounded by the resolver's ``timeout``;
the decisions (last good list, empty grace) are ``DiscoveryPolicy``'s. A
failure is logged when it starts or its message changes, and at recovery,
never once per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from wsclient.config import Backend, redact_text
from wsclient.resolvers.base import Resolver, ResolverError
from wsclient.resolvers.policy import DiscoveryPolicy

__all__ = ["ResolverRunner"]

logger = logging.getLogger("wsclient.resolvers")


class ResolverRunner:
    def __init__(
        self, resolver: Resolver, apply: Callable[[list[Backend]], Awaitable[None]]
    ) -> None:
        self.resolver = resolver
        self._apply = apply
        self.policy = DiscoveryPolicy(resolver.empty_grace)
        self._task: asyncio.Task[None] | None = None

    async def resolve_once(self) -> float:
        """One resolution, applied if it says so; returns the seconds until the next."""
        resolver = self.resolver
        try:
            async with asyncio.timeout(resolver.timeout):
                resolution = await resolver.resolve()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _describe(exc, resolver.timeout)
            if self.policy.failed(error):
                logger.warning(
                    "resolver %s failed (%s); keeping the last good list of %s backend(s)",
                    resolver.describe(),
                    error,
                    "no" if self.policy.applied is None else len(self.policy.applied),
                )
            return resolver.retry_delay
        recovering = self.policy.consecutive_failures > 0
        now = time.monotonic()
        wanted = self.policy.succeeded(resolution.backends, now, time.time())
        if recovering:
            logger.warning("resolver %s answers again", resolver.describe())
        held = self.policy.holding_empty_for(now)
        if held is not None and held > 0:
            logger.warning(
                "resolver %s answered no backends; keeping the last list for %.1f s more",
                resolver.describe(),
                held,
            )
        if wanted is not None:
            if not wanted:
                logger.warning(
                    "resolver %s: no backends for %s s; applying the empty list",
                    resolver.describe(),
                    self.policy.empty_grace,
                )
            await self._apply(wanted)
        delay = resolution.next_in
        if held is not None and held > 0:
            delay = min(delay, held + 0.001)
        return delay

    async def first(self) -> None:
        """The resolution before the pool opens its warm set; the loop continues after it."""
        delay = await self.resolve_once()
        self._task = asyncio.get_running_loop().create_task(
            self._after(delay), name="wsclient-resolver"
        )

    async def _after(self, delay: float) -> None:
        while not math.isinf(delay):
            await asyncio.sleep(delay)
            delay = await self.resolve_once()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))

    def status(self) -> dict[str, Any]:
        return {"resolver": self.resolver.describe(), **self.policy.status(time.monotonic())}


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout} s"
    if isinstance(exc, ResolverError):
        return str(exc)
    return redact_text(f"{type(exc).__name__}: {exc}")
