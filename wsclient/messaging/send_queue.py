"""A FIFO of outgoing messages bounded in bytes: what keeps a session's memory flat.

``put()`` waits (up to its timeout, then ``TimeoutError``) while the queue holds
``max_bytes`` or more; a single message larger than the bound is admitted when
the queue is empty, so any message can go out eventually. Waiting senders are
admitted in arrival order.
"""

from __future__ import annotations

import asyncio
import collections


def message_size(data: str | bytes) -> int:
    """Bytes on the wire (payload only): UTF-8 size for text."""
    return len(data) if isinstance(data, bytes) else len(data.encode())


class SendQueue:
    """Outgoing messages waiting for the writer; bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[str | bytes, int]] = collections.deque()
        self._bytes = 0
        self._space_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._item_waiter: asyncio.Future[None] | None = None
        self._empty_waiters: list[asyncio.Future[None]] = []

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, size: int) -> bool:
        return not self._items or self._bytes + size <= self.max_bytes

    async def put(self, data: str | bytes, timeout: float | None) -> None:
        size = message_size(data)
        if not self._space_waiters and self._fits(size):
            self._append(data, size)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._space_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await waiter
                    if self._fits(size):
                        break
                    waiter = asyncio.get_running_loop().create_future()
                    self._space_waiters.appendleft(waiter)  # keeps its place in line
        except TimeoutError:
            raise TimeoutError(
                f"send queue full ({self._bytes} of {self.max_bytes} bytes queued) "
                f"for {timeout} s: the backend reads too slowly or the session is reconnecting"
            ) from None
        finally:
            if waiter in self._space_waiters:
                self._space_waiters.remove(waiter)
            self._wake_space()  # pass the turn on if this one gave up
        self._append(data, size)
        self._wake_space()

    def _append(self, data: str | bytes, size: int) -> None:
        self._items.append((data, size))
        self._bytes += size
        if self._item_waiter is not None and not self._item_waiter.done():
            self._item_waiter.set_result(None)

    def _wake_space(self) -> None:
        if self._space_waiters and not self._space_waiters[0].done():
            self._space_waiters[0].set_result(None)

    async def peek(self) -> str | bytes:
        """The oldest message, waiting for one; it stays queued until ``pop()``."""
        while not self._items:
            self._item_waiter = asyncio.get_running_loop().create_future()
            await self._item_waiter
        return self._items[0][0]

    def pop(self) -> None:
        _, size = self._items.popleft()
        self._bytes -= size
        if self._space_waiters:
            first = self._space_waiters.popleft()
            if not first.done():
                first.set_result(None)
        if not self._items:
            for waiter in self._empty_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._empty_waiters.clear()

    async def wait_empty(self) -> None:
        if self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._empty_waiters.append(waiter)
            await waiter

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
        while self._space_waiters:
            waiter = self._space_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        for waiter in self._empty_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._empty_waiters.clear()
