"""Calling into a pool from another thread: ``on_loop(pool, fn)`` runs ``fn`` on the
pool's own event loop and hands its result back, bounded.

Exporters need it: a Prometheus scrape or an OpenTelemetry collection usually
runs in its own thread, while a pool's state belongs to its loop's thread.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

from wsclient.pool import WebSocketPool

__all__ = ["on_loop"]

_T = TypeVar("_T")


def on_loop(pool: WebSocketPool, fn: Callable[[], _T], timeout: float = 2.0) -> _T:
    """``fn()`` on the pool's own loop: at once when called from that loop's thread or
    when the loop is not running, otherwise through ``call_soon_threadsafe``, waited
    for at most ``timeout`` seconds. When that runs out, ``fn`` either never runs
    (``TimeoutError``) or is running now and its result is still returned: what it
    takes from the pool is never dropped on the floor."""
    loop = pool._loop
    if (
        loop is None
        or loop.is_closed()
        or not loop.is_running()
        or threading.get_ident() == pool._thread
    ):
        return fn()
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return  # the caller gave up before the loop got here
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the calling thread
            future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if not future.cancel():  # started meanwhile: a few operations from done
            return future.result(timeout)
        raise TimeoutError(
            f"wsclient.metrics: the pool's event loop did not answer within {timeout} s"
        ) from None
