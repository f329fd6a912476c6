"""cProfile output for ``profile_hot_path.py``: own time per round trip grouped by module.

Runs in the profiled client process (``_bench_clients.py rt --profile``), which returns the
groups and the listing in its JSON.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from typing import Any

# Where a frame's own time goes, by the file it is in (first match wins).
PROFILE_GROUPS: tuple[tuple[str, str], ...] = (
    ("wsclient/pool.py", "wsclient pool shell (pool.py)"),
    ("wsclient/core", "wsclient pool core (core.py)"),
    ("wsclient/balancers", "wsclient balancer"),
    ("wsclient/connection.py", "wsclient Connection"),
    ("wsclient/", "wsclient, other"),
    ("aiohttp/_websocket/writer", "aiohttp frame writer (incl. transport.write)"),
    ("aiohttp/", "aiohttp, other"),
    ("websockets/", "websockets"),
    ("_bench_clients.py", "benchmark loop"),
    ("asyncio/", "asyncio (Python part)"),
)


def profile_groups(stats: pstats.Stats, n_rt: int) -> list[tuple[str, float, int]]:
    """(group, own CPU us per round trip, calls per round trip), largest first."""
    own: dict[str, float] = {}
    calls: dict[str, int] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _name), (_cc, nc, tt, _ct, _callers) in raw.items():
        group = next((g for key, g in PROFILE_GROUPS if key in filename), "builtins / C")
        own[group] = own.get(group, 0.0) + tt
        calls[group] = calls.get(group, 0) + nc
    rows = [(g, own[g] / n_rt * 1e6, round(calls[g] / n_rt)) for g in own]
    return sorted(rows, key=lambda r: -r[1])


def profile_text(profile: cProfile.Profile, n_rt: int, kind: str) -> str:
    buf = io.StringIO()
    buf.write(f"{kind}: {n_rt} round trips in the window under cProfile (thread CPU time)\n\n")
    stats = pstats.Stats(profile, stream=buf)
    total = sum(us for _g, us, _c in profile_groups(stats, n_rt))
    buf.write(f"own CPU time per round trip by group (total {total:.1f} us under the profiler):\n")
    for group, us, ncalls in profile_groups(stats, n_rt):
        buf.write(f"  {group:<46} {us:7.2f} us  {us / total:6.1%}  {ncalls:4d} calls\n")
    buf.write("\n")
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats("wsclient/")
    return buf.getvalue()
