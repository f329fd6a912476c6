"""Backends from a file: the pool follows edits to backends.json (README "Discovering backends")."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from wsclient import FileResolver, WebSocketPool
from wsclient.testing import BackendServer


def write(path: Path, backends: list[dict[str, object]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"backends": backends}))
    os.replace(tmp, path)  # atomic: the resolver never reads half a file


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "backends.json"
        async with BackendServer() as a, BackendServer() as b:
            write(path, [{"id": "a", "url": a.url}])
            resolver = FileResolver(path, interval=0.05)
            async with WebSocketPool(resolver=resolver, health_check={"enabled": False}) as pool:
                print("backends:", [x.id for x in pool.backends])
                write(path, [{"id": "a", "url": a.url}, {"id": "b", "url": b.url, "weight": 2}])
                added = asyncio.Event()
                pool.on("backend-added", lambda backend_id: added.set())
                await asyncio.wait_for(added.wait(), 5)
                print("backends:", [(x.id, x.weight) for x in pool.backends])
                path.write_text("{ not json")  # a broken edit: the last good list stays
                for _ in range(500):  # the resolver fires no event: look, bounded
                    if pool.stats().fleet.resolver_failing:
                        break
                    await asyncio.sleep(0.01)
                print("resolver error:", pool.fleet_status()["resolver"]["last_error"])
                print("backends:", [x.id for x in pool.backends])


if __name__ == "__main__":
    asyncio.run(main())
