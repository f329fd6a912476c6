"""Resolvers without DNS: the discovery policy, StaticResolver, FileResolver feeding a pool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FAST, until
from tests.fleet.servers import run_example
from wsclient import Backend, FileResolver, StaticResolver, WebSocketPool
from wsclient.resolvers.policy import DiscoveryPolicy
from wsclient.resolvers.runner import ResolverRunner
from wsclient.testing import BackendServer


def b(n: int, weight: int = 1) -> Backend:
    return Backend(id=f"b{n}", url=f"ws://127.0.0.1:{9000 + n}/ws", weight=weight)


def test_policy_applies_changes_only() -> None:
    """The same answer twice applies once; a weight change applies again."""
    policy = DiscoveryPolicy(empty_grace=5)
    assert policy.succeeded([b(1), b(2)], 0, 0) == [b(1), b(2)]
    assert policy.succeeded([b(2), b(1)], 1, 1) is None
    assert policy.succeeded([b(1), b(2, weight=3)], 2, 2) == [b(1), b(2, weight=3)]


def test_policy_holds_an_empty_answer_for_the_grace() -> None:
    """Empty after non-empty: held until empty_grace passed, then applied; a list ends the hold."""
    policy = DiscoveryPolicy(empty_grace=5)
    policy.succeeded([b(1)], 0, 0)
    assert policy.succeeded([], 10, 10) is None
    assert policy.holding_empty_for(12) == 3
    assert policy.succeeded([], 14.9, 14.9) is None
    assert policy.succeeded([], 15, 15) == []
    fresh = DiscoveryPolicy(empty_grace=5)
    fresh.succeeded([b(1)], 0, 0)
    assert fresh.succeeded([], 1, 1) is None
    assert fresh.succeeded([b(1)], 2, 2) is None  # back to what is applied: nothing to do
    assert fresh.holding_empty_for(3) is None


def test_policy_failures_keep_the_list_and_are_news_once() -> None:
    """A failure streak is news at its start and when the message changes."""
    policy = DiscoveryPolicy(empty_grace=5)
    policy.succeeded([b(1)], 0, 0)
    assert policy.failed("timeout") is True
    assert policy.failed("timeout") is False
    assert policy.failed("refused") is True
    assert policy.applied == [b(1)]
    assert policy.status(0)["consecutive_failures"] == 3
    policy.succeeded([b(1)], 1, 1)
    assert policy.status(1)["consecutive_failures"] == 0 and policy.last_error is None


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_file_resolver_reads_json_and_toml(tmp_path: Path) -> None:
    """Both formats, URLs or tables; a bare JSON list works too."""
    js = tmp_path / "b.json"
    write(
        js,
        json.dumps({"backends": ["ws://a:1/ws", {"id": "x", "url": "ws://b:2/ws", "weight": 3}]}),
    )
    result = await FileResolver(js).resolve()
    assert [(x.id, x.weight) for x in result.backends] == [("ws://a:1/ws", 1), ("x", 3)]
    write(js, json.dumps(["ws://c:3/ws"]))
    assert [x.url for x in (await FileResolver(js).resolve()).backends] == ["ws://c:3/ws"]
    toml = tmp_path / "b.toml"
    write(toml, '[[backends]]\nid = "t"\nurl = "ws://t:4/ws"\nweight = 2\n')
    assert [(x.id, x.weight) for x in (await FileResolver(toml).resolve()).backends] == [("t", 2)]


async def test_file_resolver_errors_name_the_problem_and_no_secret(tmp_path: Path) -> None:
    """Invalid JSON, a bad backend, duplicates, a missing file: ResolverError saying which."""
    path = tmp_path / "b.json"
    resolver = FileResolver(path)
    with pytest.raises(Exception, match="cannot read"):
        await resolver.resolve()
    write(path, "{nope")
    with pytest.raises(Exception, match="not valid JSON"):
        await resolver.resolve()
    write(path, json.dumps([{"url": "http://x/ws", "headers": {"X-Token": "s3cr3t"}}]))
    with pytest.raises(Exception, match="backend #0: url") as info:
        await resolver.resolve()
    assert "s3cr3t" not in str(info.value)
    write(path, json.dumps([{"id": "a", "url": "ws://x/ws"}, {"id": "a", "url": "ws://y/ws"}]))
    with pytest.raises(Exception, match="duplicate backend ids: a"):
        await resolver.resolve()
    with pytest.raises(ValueError, match=r"\.json or \.toml"):
        FileResolver(tmp_path / "b.yaml")


async def test_a_file_resolver_drives_the_pool(tmp_path: Path) -> None:
    """Edits to the file reach the pool; a broken edit keeps the last good list, and shows."""
    servers = [BackendServer(name=f"f{i}") for i in range(2)]
    for s in servers:
        await s.start()
    path = tmp_path / "backends.json"
    write(path, json.dumps([{"id": "one", "url": servers[0].url}]))
    try:
        pool = WebSocketPool(**FAST, resolver=FileResolver(path, interval=0.05))
        async with pool:
            assert [x.id for x in pool.backends] == ["one"]
            write(
                path,
                json.dumps(
                    [
                        {"id": "one", "url": servers[0].url},
                        {"id": "two", "url": servers[1].url, "weight": 2},
                    ]
                ),
            )
            await until(lambda: len(pool.backends) == 2, timeout=2)
            write(path, "[{broken")
            await until(lambda: pool.stats().fleet.resolver_failing is True, timeout=2)
            assert len(pool.backends) == 2
            assert "not valid JSON" in pool.fleet_status()["resolver"]["last_error"]
            write(path, json.dumps([{"id": "two", "url": servers[1].url}]))
            await until(lambda: [x.id for x in pool.backends] == ["two"], timeout=2)
            assert pool.stats().fleet.resolver_failing is False
            async with pool.acquire() as conn:
                assert conn.backend_id == "two"
    finally:
        for s in servers:
            await s.stop()


async def test_static_resolver_resolves_once() -> None:
    """The list, then never again; a pool with it behaves as with backends=."""
    server = BackendServer()
    await server.start()
    try:
        resolver = StaticResolver([server.url])
        applied: list[list[Backend]] = []

        async def apply(backends: list[Backend]) -> None:
            applied.append(backends)

        runner = ResolverRunner(resolver, apply)
        await runner.first()
        await runner.stop()
        assert [[x.url for x in a] for a in applied] == [[server.url]]
        pool = WebSocketPool(**FAST, resolver=StaticResolver([server.url]))
        async with pool, pool.acquire() as conn:
            assert conn.backend_id == server.url
    finally:
        await server.stop()


def test_the_discovery_example_runs() -> None:
    """examples/discovery.py runs as is and shows the pool following the file."""
    done = run_example("discovery.py")
    assert done.returncode == 0, done.stderr
    assert "('b', 2)" in done.stdout and "not valid JSON" in done.stdout
