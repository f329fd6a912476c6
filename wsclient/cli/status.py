"""``wsclient status CONFIG``: a pool started from a config file, probed once, shown.

The file (TOML or JSON) and the ``WSCLIENT_*`` environment variables go through
``PoolConfig`` like any pool's options. The pool opens its warm set, every
backend is probed once at once (``pool.check_health()``), and the backend
table is printed; ``--json`` prints ``{"stats": PoolStats, "health":
{id: BackendHealth}}`` instead, one object per line with ``--watch``, which
refreshes every ``--interval`` seconds (``--count`` times, or until Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from wsclient.cli.view import LiveView, pool_line
from wsclient.config import PoolConfig
from wsclient.pool import WebSocketPool


def load_config(path: str) -> PoolConfig:
    """The file's options under the environment's (``PoolConfig.load``)."""
    return PoolConfig.load(path)


def snapshot_json(pool: WebSocketPool) -> dict[str, Any]:
    return {
        "stats": pool.stats().model_dump(mode="json"),
        "health": {bid: h.model_dump(mode="json") for bid, h in pool.health_status().items()},
    }


async def run_status(
    console: Console,
    path: str | os.PathLike[str],
    *,
    as_json: bool,
    watch: bool,
    interval: float,
    count: int | None,
) -> int:
    config = load_config(os.fspath(path))
    async with WebSocketPool(config) as pool:
        await pool.check_health()
        view = LiveView(pool)

        def frame() -> Group:
            return view.frame(console, lambda stats: Text(f"{os.fspath(path)}: {pool_line(stats)}"))

        if as_json:
            refreshes = 0
            while True:
                print(json.dumps(snapshot_json(pool)), flush=True)
                refreshes += 1
                if not watch or (count is not None and refreshes >= count):
                    return 0
                await asyncio.sleep(interval)
        if not watch:
            console.print(frame())
            return 0
        refreshes = 0
        with Live(frame(), console=console, auto_refresh=False) as live:
            while count is None or refreshes < count:
                refreshes += 1
                await asyncio.sleep(interval)
                live.update(frame(), refresh=True)
    return 0
