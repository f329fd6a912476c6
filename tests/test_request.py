"""``pool.request()`` / ``Multiplexer`` against real backends: replies routed to their
callers, many in flight per connection, a SIGKILLed backend failing exactly its
in-flight requests, timeouts and late replies, unsolicited messages, affinity keys."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsclient import (
    Backend,
    ConnectionClosedError,
    JsonEnvelope,
    Message,
    Multiplexer,
    PoolClosedError,
    WebSocketPool,
)
from wsclient.testing import BackendProcess, BackendServer
from wsclient.testing.interop import InteropServer

from .conftest import FAST, PoolFactory, until

CALLERS = 256
CONNECTIONS = 8


@pytest.fixture
async def processes() -> AsyncIterator[list[BackendProcess]]:
    procs = [BackendProcess(name=f"rq{i}") for i in range(3)]
    await asyncio.gather(*(p.start() for p in procs))
    yield procs
    await asyncio.gather(*(p.stop() for p in procs))


def _pool(urls: list[str], **options: Any) -> WebSocketPool:
    backends = [Backend(id=f"b{i}", url=u) for i, u in enumerate(urls)]
    return WebSocketPool(
        **{
            **FAST,
            "backends": backends,
            "min_connections": 0,
            "max_connections": 2 * CONNECTIONS,  # pool.request() takes half: 8
            "load_balancing": "round-robin",
            **options,
        }
    )


async def test_256_callers_over_8_connections_each_get_their_own_reply(
    servers: list[BackendServer],
) -> None:
    """Every reply reaches the caller that sent the request; 8 connections carry 256 callers."""
    async with _pool([s.url for s in servers]) as pool:
        peak = 0

        async def caller(i: int) -> None:
            nonlocal peak
            for n in range(5):
                reply = await pool.request({"caller": i, "n": n}, timeout=10)
                assert reply["caller"] == i and reply["n"] == n
                peak = max(peak, pool.active_count)

        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
        stats = pool._multiplexer.stats  # type: ignore[union-attr]
        assert stats["requests"] == stats["replies"] == CALLERS * 5
        assert stats["late_replies"] == stats["unsolicited"] == stats["failed"] == 0
        assert peak == CONNECTIONS  # leases held by the multiplexer, and no more
        assert pool.size == CONNECTIONS
        assert sum(s.messages_received for s in servers) == CALLERS * 5
    assert pool.size == 0


async def test_killed_backend_fails_exactly_its_in_flight_requests(
    processes: list[BackendProcess],
) -> None:
    """SIGKILL under 256 callers: affected requests raise ConnectionClosedError, the rest
    get their own replies; nothing is lost or delivered twice."""
    pool = _pool(
        [p.url for p in processes], min_connections=3, circuit_breaker={"failure_threshold": 2}
    )
    ok: Counter[str] = Counter()
    failed: list[ConnectionClosedError] = []
    other: list[BaseException] = []
    stop = asyncio.Event()
    killed = asyncio.Event()
    ok_after_kill = 0

    async def caller(i: int) -> None:
        nonlocal ok_after_kill
        n = 0
        while not stop.is_set():
            n += 1
            try:
                reply = await pool.request({"caller": i, "n": n}, timeout=10)
            except ConnectionClosedError as exc:
                failed.append(exc)
                continue
            except Exception as exc:  # anything else is a bug the test reports
                other.append(exc)
                return
            assert (reply["caller"], reply["n"]) == (i, n)
            ok["all"] += 1
            if killed.is_set():
                ok_after_kill += 1

    async with pool:
        mux = Multiplexer(pool, max_connections=CONNECTIONS)
        pool._multiplexer = mux  # the same object pool.request() makes, made visible
        tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
        await until(lambda: ok["all"] > 2000, timeout=20)
        # The killed backend carries requests at the moment it dies.
        await until(lambda: any(c.backend_id == "b1" and c.waiting for c in mux._channels))
        await processes[1].kill()
        killed.set()
        await until(lambda: ok_after_kill > 2000, timeout=20)
        assert all(c.backend_id != "b1" for c in mux._channels)  # its connections retired
        stop.set()
        await asyncio.gather(*tasks)
        stats = mux.stats

    assert other == []
    assert failed, "requests in flight on the killed backend must fail"
    assert all(exc.code == 1006 or exc.code is None for exc in failed), failed[:3]
    # Each request ended exactly once: a reply or a ConnectionClosedError.
    assert stats["replies"] == ok["all"]
    assert stats["failed"] == len(failed)
    assert stats["requests"] == ok["all"] + len(failed)
    assert stats["late_replies"] == stats["unsolicited"] == stats["timeouts"] == 0
    assert pool.size == 0


async def test_requests_against_uvicorn_through_its_graceful_shutdown() -> None:
    """The id survives a server wsclient did not write (uvicorn; the websockets server is
    examples/rpc.py's); its graceful shutdown (1012) fails exactly what was in flight on
    it, and later requests are served by the other server."""
    async with (
        InteropServer("uvicorn") as a,
        InteropServer("uvicorn") as b,
        _pool([a.url, b.url], min_connections=4) as pool,
    ):
        replies = await asyncio.gather(*(pool.request({"n": n}) for n in range(200)))
        assert [r["n"] for r in replies] == list(range(200))
        # A slow stream keeps requests in flight on both servers while one shuts down.
        mux = pool._multiplexer
        assert mux is not None
        assert {c.backend_id for c in mux._channels} == {"b0", "b1"}
        owed = [
            asyncio.create_task(pool.request({"op": "count", "n": 1, "delay": 0.3}))
            for _ in range(8)  # one server handles a connection's messages in turn
        ]
        await until(lambda: mux.stats["in_flight"] == 8)
        on_a = sum(len(c.waiting) for c in mux._channels if c.backend_id == "b0")
        await a.terminate()
        outcomes = await asyncio.gather(*owed, return_exceptions=True)
        closed = [o for o in outcomes if isinstance(o, ConnectionClosedError)]
        assert all(isinstance(o, dict | ConnectionClosedError) for o in outcomes), outcomes
        assert len(closed) == on_a > 0  # exactly those in flight on the server shut down
        assert {c.code for c in closed} <= {1001, 1012}
        after = await asyncio.gather(*(pool.request({"n": n}, timeout=5) for n in range(50)))
        assert [r["n"] for r in after] == list(range(50))


async def test_timed_out_request_late_reply_is_dropped_and_counted(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A reply after the timeout reaches nobody: counted as late, never as another's reply."""
    pool = await make_pool(servers[:1], max_connections=2)
    servers[0].set_reply_delay(0.3)
    with pytest.raises(TimeoutError):
        await pool.request({"op": "slow"}, timeout=0.05)
    mux = pool._multiplexer
    assert mux is not None
    await until(lambda: mux.stats["late_replies"] == 1)
    servers[0].set_reply_delay(0)
    assert (await pool.request({"op": "fast"}, timeout=2))["op"] == "fast"
    assert mux.stats["timeouts"] == 1 and mux.stats["unsolicited"] == 0


async def test_unsolicited_messages_go_to_the_handler(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A message with no waiter (a server push) goes to on_unsolicited, not to a request."""
    pool = await make_pool(servers[:1], max_connections=2)
    seen: list[tuple[Any, str]] = []
    mux = Multiplexer(
        pool, on_unsolicited=lambda value, conn: seen.append((value, conn.backend_id))
    )
    assert (await mux.request({"q": 1}))["q"] == 1
    await servers[0].push('{"event": "tick"}')
    await servers[0].push("not json")
    await until(lambda: len(seen) == 2)
    assert seen[0] == ({"event": "tick"}, "b0")
    assert isinstance(seen[1][0], Message) and seen[1][0].data == "not json"
    await mux.aclose()
    with pytest.raises(PoolClosedError):
        await mux.request({"q": 2})


async def test_custom_id_field_and_envelope(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """The correlation field is configurable; a request carrying it already is refused."""
    pool = await make_pool(servers[:1], max_connections=2)
    mux = Multiplexer(pool, envelope=JsonEnvelope("rid"))
    reply = await mux.request({"x": 1})
    assert isinstance(reply["rid"], int) and "id" not in reply
    with pytest.raises(ValueError, match="'rid'"):
        await mux.request({"rid": 5})
    with pytest.raises(TypeError):
        await mux.request(["not", "a", "dict"])
    await mux.aclose()


async def test_key_pins_requests_to_the_keys_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """With ip-hash, requests with one key all go to one backend, several keys share links."""
    pool = await make_pool(servers, load_balancing="ip-hash", max_connections=12)
    before = [s.messages_received for s in servers]
    await asyncio.gather(*(pool.request({"n": n}, key="user-7") for n in range(50)))
    got = [s.messages_received - b for s, b in zip(servers, before, strict=True)]
    assert sorted(got) == [0, 0, 50]
    await asyncio.gather(*(pool.request({"n": n}, key=f"user-{n}") for n in range(40)))
    mux = pool._multiplexer
    assert mux is not None and mux.stats["connections"] <= len(servers)


async def test_pool_close_fails_in_flight_requests_and_returns_leases(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Closing the pool ends the multiplexer first: waiting requests fail, nothing leaks."""
    pool = await make_pool(servers[:1], max_connections=4, close_timeout=0.3)
    servers[0].stall_after_handshake()
    pending = [asyncio.create_task(pool.request({"n": n}, timeout=10)) for n in range(10)]
    await until(
        lambda: pool._multiplexer is not None and pool._multiplexer.stats["in_flight"] == 10
    )
    await pool.close(timeout=1.0)
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, ConnectionClosedError) for r in results), results
    assert pool.size == 0
    servers[0].stall_after_handshake(False)


class _PipeEnvelope:
    """Another envelope: ``"<id>|<text>"`` frames, no JSON at all."""

    def encode(self, message: Any, request_id: int) -> str:
        return f"{request_id}|{message}"

    def decode(self, message: Message) -> tuple[Any, Any]:
        head, _, body = str(message.data).partition("|")
        return (int(head), body) if head.isdigit() else (None, message.data)


async def test_any_envelope_plugs_in(servers: list[BackendServer], make_pool: PoolFactory) -> None:
    """An object with encode/decode replaces the JSON envelope; ids still route replies."""
    pool = await make_pool(servers[:1], max_connections=4)
    mux = Multiplexer(pool, envelope=_PipeEnvelope())
    replies = await asyncio.gather(*(mux.request(f"msg-{n}") for n in range(64)))
    assert replies == [f"msg-{n}" for n in range(64)]
    await mux.aclose()
