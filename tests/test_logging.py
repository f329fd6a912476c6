"""Logging: wsclient.* loggers, structured extra, one line per transition, wsclient's
words (no aiohttp internals), nothing per message at INFO."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

from wsclient import Backend, WebSocketPool
from wsclient.testing import BackendProcess

from .conftest import FAST


def field(record: logging.LogRecord, name: str) -> Any:
    """A structured field passed through ``extra=``."""
    return record.__dict__[name]


AIOHTTP_WORDS = ("Cannot write", "ClientConnection", "aiohttp", "ServerDisconnected", "transport")


async def test_sigkill_logs_each_transition_once_with_structured_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backend SIGKILLed under a pool: a line per lost connection and one per backend
    transition (ejected, breaker opened), each with backend_id (and connection_id, code,
    reason where they apply); no aiohttp wording; message traffic logs nothing at INFO."""
    procs = [BackendProcess(name=f"p{i}") for i in range(2)]
    await asyncio.gather(*(p.start() for p in procs))
    try:
        pool = WebSocketPool(
            backends=[Backend(id=p.name, url=p.url) for p in procs],
            **{**FAST, "reconnect": {"initial_delay": 5.0, "max_delay": 5.0, "jitter": 0.0}},
            min_connections=4,
            heartbeat={"interval": 0.2, "timeout": 0.5},
            circuit_breaker={"failure_threshold": 2, "recovery_timeout": 30},
        )
        opened = asyncio.Event()
        pool.on("breaker-open", lambda backend_id: opened.set())
        caplog.set_level(logging.DEBUG, logger="wsclient")
        async with pool:
            caplog.clear()
            for i in range(50):
                async with pool.acquire() as conn:
                    await conn.send(f"message {i}")
                    await conn.receive(timeout=5)
            traffic = [r for r in caplog.records if r.levelno >= logging.INFO]
            assert traffic == [], [r.getMessage() for r in traffic]

            await procs[1].kill()
            await asyncio.wait_for(opened.wait(), 10)
            await asyncio.sleep(0)  # the second lost connection's line, same step
        records = [r for r in caplog.records if r.name.startswith("wsclient")]
    finally:
        await asyncio.gather(*(p.stop() for p in procs))

    info = [r for r in records if r.levelno >= logging.INFO]
    for r in info:
        assert r.name.startswith("wsclient."), r.name
        assert getattr(r, "backend_id", None) == "p1", (r.getMessage(), r.__dict__)
    messages = [r.getMessage() for r in info]
    for message in (r.getMessage() for r in records):
        assert not any(word in message for word in AIOHTTP_WORDS), message

    transitions = Counter(getattr(r, "event", None) for r in info if hasattr(r, "event"))
    assert transitions == {"backend-ejected": 1, "breaker-open": 1}, messages
    breaker_lines = [m for m in messages if "breaker" in m]
    assert breaker_lines == ["backend p1: circuit breaker opened"]
    ejected = next(r for r in info if getattr(r, "event", None) == "backend-ejected")
    assert ejected.levelno == logging.WARNING
    assert "without a close frame" in field(ejected, "reason")

    lost = [r for r in info if getattr(r, "connection_id", None)]
    assert len(lost) == 2 and len({field(r, "connection_id") for r in lost}) == 2
    for r in lost:
        assert field(r, "code") == 1006 and field(r, "reason").startswith("connection lost")
    # the lost connection comes first, the transition it caused after it
    assert messages.index(lost[0].getMessage()) < messages.index(ejected.getMessage())
    # the breaker's own line is DEBUG only: the pool's is the one at INFO and above
    assert any(r.name == "wsclient.breaker" and r.levelno == logging.DEBUG for r in records)
