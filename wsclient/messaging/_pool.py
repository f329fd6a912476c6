"""What the messaging layer needs from a pool: lease, give back, read its config.

``WebSocketPool`` satisfies it; the messaging modules depend on this protocol,
not on ``wsclient.pool``, so the pool can import them (``pool.session()``,
``pool.request()``) without a cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from wsclient.config import PoolConfig
from wsclient.connection import Connection


class Closable(Protocol):
    """A client of the pool that holds leases and is closed with it."""

    async def aclose(self) -> None: ...


class Leaser(Protocol):
    """The slice of ``WebSocketPool`` the sessions and the multiplexer use."""

    config: PoolConfig

    def acquire(
        self, key: str | None = None, timeout: float | None = None
    ) -> Awaitable[Connection]: ...

    def release(self, conn: Connection) -> None: ...

    def _attach_client(self, client: Closable) -> None: ...

    def _detach_client(self, client: Closable) -> None: ...
