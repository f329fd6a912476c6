"""DnsResolver against a real DNS server (dnslib, in a child process) whose records change.

Backends are real servers on loopback addresses (127.0.0.2, 127.0.0.3 … share
one port, as the addresses of one DNS name do). Traffic runs the whole time:
a record added gets its share, a removed one drains without failing the lease
that is out on it, re-weighted SRV records move the shares, a DNS server that
stops answering (SIGSTOP) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from aiohttp import web

from tests.conftest import FAST, until
from tests.fleet.servers import DnsServer
from wsclient import WebSocketPool
from wsclient.resolvers.dns import DnsResolver
from wsclient.testing import BackendServer

NAME = "orders.test"
INTERVAL = 0.3


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hosts() -> AsyncIterator[list[BackendServer]]:
    """Backends on 127.0.0.2, .3 and .4, all on one port."""
    first = BackendServer(host="127.0.0.2", name="h2")
    await first.start()
    port = int(first.url.split(":")[2].split("/")[0])
    rest = [BackendServer(host=f"127.0.0.{i}", port=port, name=f"h{i}") for i in (3, 4)]
    await asyncio.gather(*(s.start() for s in rest))
    yield [first, *rest]
    await asyncio.gather(*(s.stop() for s in (first, *rest)))


def a_records(*ips: str, ttl: int = 1) -> list[dict[str, Any]]:
    return [{"name": NAME, "type": "A", "value": ip, "ttl": ttl} for ip in ips]


def port_of(server: BackendServer) -> int:
    return int(server.url.split(":")[2].split("/")[0])


class Traffic:
    """Acquire, hold 2 ms, release, in a loop; counts leases per backend and keeps errors."""

    def __init__(self, pool: WebSocketPool) -> None:
        self.pool = pool
        self.counts: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self.errors: list[BaseException] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with self.pool.acquire(timeout=2.0) as conn:
                    self.counts[conn.backend_id] += 1
                    self.first_seen.setdefault(conn.backend_id, time.monotonic())
                    await asyncio.sleep(0.002)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.append(exc)
                await asyncio.sleep(0.01)

    async def shares(self, seconds: float) -> dict[str, float]:
        before = Counter(self.counts)
        await asyncio.sleep(seconds)
        window = self.counts - before
        total = sum(window.values())
        return {k: v / total for k, v in window.items()}

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def dns_pool(resolver: DnsResolver, **options: Any) -> WebSocketPool:
    return WebSocketPool(
        **{**FAST, "min_connections": 2, "max_connections": 8, "resolver": resolver, **options}
    )


async def test_records_added_removed_under_traffic(
    dns_server: DnsServer, hosts: list[BackendServer]
) -> None:
    """Added: its share within interval + 1 s. Removed: drains; the lease out on it still works."""
    port = port_of(hosts[0])
    dns_server.set_records(a_records("127.0.0.2", "127.0.0.3"))
    resolver = DnsResolver(
        f"ws://{NAME}:{port}/ws", interval=INTERVAL, nameservers=[dns_server.nameserver]
    )
    async with dns_pool(resolver) as pool:
        assert sorted(pool.health_status()) == [
            f"{NAME}@127.0.0.2:{port}",
            f"{NAME}@127.0.0.3:{port}",
        ]
        traffic = Traffic(pool)
        try:
            await asyncio.sleep(0.2)
            added_id = f"{NAME}@127.0.0.4:{port}"
            added_at = time.monotonic()
            dns_server.set_records(a_records("127.0.0.2", "127.0.0.3", "127.0.0.4"))
            await until(lambda: added_id in traffic.first_seen, timeout=INTERVAL + 1.0)
            first_lease = traffic.first_seen[added_id] - added_at
            shares = await traffic.shares(0.5)
            print(f"\nDNS added: first lease after {first_lease:.3f} s; shares {shares}")
            assert first_lease <= INTERVAL + 1.0
            assert abs(shares[added_id] - 1 / 3) < 0.1, shares

            # Hold a lease on .2, then take .2 out of DNS while it is out.
            gone_id = f"{NAME}@127.0.0.2:{port}"
            async with asyncio.timeout(5):
                while True:
                    held = await pool.acquire(timeout=2.0)
                    if held.backend_id == gone_id:
                        break
                    pool.release(held)
                    # An acquire that finds an idle link never yields; a pick of .2
                    # with no idle link there borrows one elsewhere. Let the traffic
                    # (and the pool's growth) run between tries.
                    await asyncio.sleep(0.002)
            dns_server.set_records(a_records("127.0.0.3", "127.0.0.4"))
            await until(lambda: gone_id not in pool.health_status(), timeout=INTERVAL + 1.0)
            await held.send("still here")
            assert (await held.receive(timeout=2)).data == "still here"
            pool.release(held)
            await until(lambda: hosts[0].open_connections == 0, timeout=2)
            after = await traffic.shares(0.3)
            assert gone_id not in after
            assert not traffic.errors, traffic.errors[:3]
        finally:
            await traffic.stop()


async def test_srv_weights_move_the_shares(dns_server: DnsServer) -> None:
    """SRV weights 3:1 give 75/25; re-weighted to 1:1, 50/50; lower priority only."""
    servers = [BackendServer(name=f"srv{i}") for i in range(3)]
    await asyncio.gather(*(s.start() for s in servers))
    srv_name = f"_ws._tcp.{NAME}"

    def records(w1: int, w2: int) -> list[dict[str, Any]]:
        targets = [
            ("one", servers[0], w1, 0),
            ("two", servers[1], w2, 0),
            ("spare", servers[2], 9, 1),
        ]
        out: list[dict[str, Any]] = []
        for label, server, weight, priority in targets:
            host = f"{label}.{NAME}"
            out.append(
                {
                    "name": srv_name,
                    "type": "SRV",
                    "ttl": 1,
                    "priority": priority,
                    "weight": weight,
                    "port": port_of(server),
                    "target": host,
                }
            )
            out.append({"name": host, "type": "A", "value": "127.0.0.1", "ttl": 1})
        return out

    dns_server.set_records(records(3, 1))
    resolver = DnsResolver(
        f"ws://{srv_name}/ws", srv=True, interval=INTERVAL, nameservers=[dns_server.nameserver]
    )
    try:
        async with dns_pool(resolver) as pool:
            ids = {s.url: s for s in servers}
            assert len(pool.health_status()) == 2  # priority 1 ("spare") is not used
            assert {b.url for b in pool.backends} == {servers[0].url, servers[1].url} & set(ids)
            one = f"one.{NAME}@127.0.0.1:{port_of(servers[0])}"
            traffic = Traffic(pool)
            try:
                await asyncio.sleep(0.2)
                shares = await traffic.shares(1.0)
                assert abs(shares[one] - 0.75) < 0.08, shares
                dns_server.set_records(records(1, 1))
                await until(lambda: pool.health_status()[one].weight == 1, INTERVAL + 1.0)
                shares = await traffic.shares(1.0)
                assert abs(shares[one] - 0.5) < 0.08, shares
                assert not traffic.errors
            finally:
                await traffic.stop()
    finally:
        await asyncio.gather(*(s.stop() for s in servers))


async def test_a_dns_outage_changes_nothing(
    dns_server: DnsServer, hosts: list[BackendServer]
) -> None:
    """SIGSTOP the DNS server: same backends, no failed acquire, the error shows; then back."""
    port = port_of(hosts[0])
    dns_server.set_records(a_records("127.0.0.2", "127.0.0.3"))
    resolver = DnsResolver(
        f"ws://{NAME}:{port}/ws",
        interval=0.1,
        timeout=0.2,
        retry_delay=0.1,
        nameservers=[dns_server.nameserver],
    )
    async with dns_pool(resolver) as pool:
        before = sorted(pool.health_status())
        traffic = Traffic(pool)
        dns_server.pause()
        try:
            await until(lambda: pool.stats().fleet.resolver_failing is True, timeout=2)
            await asyncio.sleep(0.5)
            status = pool.fleet_status()["resolver"]
            assert status["consecutive_failures"] >= 2
            assert "no answer" in status["last_error"]
            assert sorted(pool.health_status()) == before
            assert all(h.eligible for h in pool.health_status().values())
        finally:
            dns_server.resume()
        await until(lambda: pool.stats().fleet.resolver_failing is False, timeout=2)
        await traffic.stop()
        assert not traffic.errors and sum(traffic.counts.values()) > 50


async def test_an_empty_answer_is_held_for_empty_grace(
    dns_server: DnsServer, hosts: list[BackendServer]
) -> None:
    """The name vanishes: the last list stays for empty_grace, then the pool empties."""
    port = port_of(hosts[0])
    dns_server.set_records(a_records("127.0.0.2"))
    resolver = DnsResolver(
        f"ws://{NAME}:{port}/ws",
        interval=0.1,
        empty_grace=0.8,
        nameservers=[dns_server.nameserver],
    )
    async with dns_pool(resolver, min_connections=1) as pool:
        emptied = time.monotonic()
        dns_server.set_records([])
        await until(lambda: pool.fleet_status()["resolver"]["empty_held_for"] is not None, 1)
        assert len(pool.health_status()) == 1
        await until(lambda: not pool.health_status(), timeout=2)
        assert time.monotonic() - emptied >= 0.7


async def test_tls_checks_the_name_while_dialling_the_address(dns_server: DnsServer) -> None:
    """wss:// via DNS: the certificate is checked against the name (SNI too), Host carries it."""
    ca = trustme.CA()
    cert = ca.issue_cert(NAME)  # for the name only: dialling 127.0.0.2 by address would fail
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    seen: dict[str, Any] = {}

    def on_sni(sock: Any, name: str | None, ctx: Any) -> None:
        seen["sni"] = name

    server_ctx.sni_callback = on_sni

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen["host"] = request.headers.get("Host")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    dns_server.set_records(a_records("127.0.0.2"))
    resolver = DnsResolver(
        f"wss://{NAME}:{port}/ws",
        interval=INTERVAL,
        nameservers=[dns_server.nameserver],
        ssl=client_ctx,
    )
    try:
        async with dns_pool(resolver, min_connections=1) as pool, pool.acquire() as conn:
            assert conn.url.startswith("wss://127.0.0.2:")
            await conn.send("tls")
            assert (await conn.receive(timeout=2)).data == "tls"
        assert seen == {"sni": NAME, "host": f"{NAME}:{port}"}
    finally:
        await runner.cleanup()


def test_bad_arguments_are_named() -> None:
    """Each bad argument raises a ValueError that names it."""
    with pytest.raises(ValueError, match="url"):
        DnsResolver("http://x/ws", nameservers=["127.0.0.1"])
    with pytest.raises(ValueError, match="interval"):
        DnsResolver("ws://x/ws", interval=0, nameservers=["127.0.0.1"])
    with pytest.raises(ValueError, match="nameserver"):
        DnsResolver("ws://x/ws", nameservers=["dns.example:53"])
    with pytest.raises(ValueError, match="min_ttl"):
        DnsResolver("ws://x/ws", min_ttl=10, max_ttl=1, nameservers=["127.0.0.1"])
    with pytest.raises(ValueError, match="'id'"):
        DnsResolver("ws://x/ws", id="fixed", nameservers=["127.0.0.1"])


async def test_ttl_is_clamped_and_aaaa_records_are_backends(dns_server: DnsServer) -> None:
    """No interval: the next resolution follows the TTL within [min_ttl, max_ttl]; AAAA too."""
    resolver = DnsResolver(
        f"wss://{NAME}:8443/ws",
        min_ttl=0.5,
        max_ttl=2.0,
        nameservers=[dns_server.nameserver],
    )
    records = [
        {"name": NAME, "type": "A", "value": "127.0.0.2", "ttl": 1},
        {"name": NAME, "type": "AAAA", "value": "::1", "ttl": 60},
    ]
    dns_server.set_records(records)
    result = await resolver.resolve()
    assert result.next_in == 1.0  # the smaller TTL of the two answers
    assert [(b.id, b.url, b.server_hostname) for b in result.backends] == [
        (f"{NAME}@127.0.0.2:8443", "wss://127.0.0.2:8443/ws", NAME),
        (f"{NAME}@[::1]:8443", "wss://[::1]:8443/ws", NAME),
    ]
    dns_server.set_records([{**r, "ttl": 0} for r in records])
    assert (await resolver.resolve()).next_in == 0.5  # the floor
    dns_server.set_records([{**r, "ttl": 3600} for r in records])
    assert (await resolver.resolve()).next_in == 2.0  # the ceiling
