"""Pool events: names, a listener registry, and safe delivery.

Listeners may be plain functions or coroutine functions. A listener that
raises is logged and never breaks the pool; async listeners run as tasks the
pool tracks, so none outlives ``close()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from wsclient.event_names import EVENTS

logger = logging.getLogger("wsclient.events")

Listener = Callable[..., Any]


class EventEmitter:
    """``on`` / ``off`` / ``emit`` with error isolation and task tracking."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: str, callback: Listener) -> Listener:
        """Register ``callback`` for ``event``; returns it, so it works as a decorator."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; known events: {', '.join(sorted(EVENTS))}")
        if not callable(callback):
            raise TypeError(f"callback for {event!r} is not callable: {callback!r}")
        self._listeners.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Listener) -> None:
        """Remove ``callback``; removing one that is not registered is a no-op."""
        listeners = self._listeners.get(event)
        if listeners and callback in listeners:
            listeners.remove(callback)

    def has_listeners(self, event: str) -> bool:
        return bool(self._listeners.get(event))

    def emit(self, event: str, *args: Any) -> None:
        for callback in tuple(self._listeners.get(event, ())):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._async_done)
            except Exception:
                logger.exception("listener %r for %r raised", callback, event)

    def _async_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async listener raised", exc_info=task.exception())

    async def aclose(self, timeout: float = 1.0) -> None:
        """Let running async listeners finish (bounded), then cancel the rest."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)
