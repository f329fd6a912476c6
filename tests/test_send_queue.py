"""``SendQueue``, the byte-bounded FIFO under a session's ``send()`` (pure asyncio, no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from wsclient.messaging.send_queue import SendQueue


async def test_fifo_and_bound_in_bytes() -> None:
    """Messages come out in order; a put that would pass the bound waits for room."""
    q = SendQueue(max_bytes=10)
    await q.put("aaaa", 1)
    await q.put(b"bbbb", 1)
    assert q.nbytes == 8 and len(q) == 2
    waiting = asyncio.create_task(q.put("cccc", 5))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await q.peek() == "aaaa"
    q.pop()
    await waiting
    assert [await _take(q) for _ in range(2)] == [b"bbbb", "cccc"]
    assert q.nbytes == 0


async def test_put_times_out_and_queues_nothing() -> None:
    """Past its timeout a put raises TimeoutError and leaves the queue as it was."""
    q = SendQueue(max_bytes=4)
    await q.put("full", 1)
    with pytest.raises(TimeoutError, match="send queue full"):
        await q.put("more", 0.01)
    assert len(q) == 1 and q.nbytes == 4


async def test_oversize_message_is_admitted_when_empty_and_waiters_keep_order() -> None:
    """One message above the bound still goes (alone); waiting senders are served FIFO."""
    q = SendQueue(max_bytes=4)
    await q.put("x" * 100, 0)
    order: list[str] = []

    async def put(data: str) -> None:
        await q.put(data, 1)
        order.append(data)

    tasks = [asyncio.create_task(put(d)) for d in ("1111", "2222", "3333")]
    await asyncio.sleep(0)
    for _ in range(3):
        await q.peek()
        q.pop()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["1111", "2222", "3333"]


async def test_wait_empty_and_clear() -> None:
    """wait_empty() returns once everything is popped, or cleared."""
    q = SendQueue(max_bytes=100)
    await q.put("a", 0)
    waiter = asyncio.create_task(q.wait_empty())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.clear()
    await asyncio.wait_for(waiter, 1)
    with pytest.raises(ValueError):
        SendQueue(0)


async def _take(q: SendQueue) -> str | bytes:
    item = await q.peek()
    q.pop()
    return item
