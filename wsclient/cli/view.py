"""The backend table that ``wsclient demo`` and ``wsclient status`` show, and what it
needs beyond one snapshot: shares over a recent window, and each backend's last
error with its age, cleared once the backend has recovered."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from wsclient.backend import BackendHealth
from wsclient.pool import WebSocketPool
from wsclient.stats import PoolStats


class _Error(NamedTuple):
    text: str
    since: float  # monotonic


class ErrorClock:
    """Each backend's current error and when it started.

    ``health_status()`` keeps the last error forever (it is history); a live view
    shows it only while the backend is not back to normal (healthy, breaker
    closed, not ejected, no failure since its last success), with its age, so
    no stale error follows a recovery.
    """

    def __init__(self) -> None:
        self._errors: dict[str, _Error] = {}
        self.history: list[tuple[float, str, str]] = []  # (monotonic, backend, error)

    def failed(self, backend_id: str, error: str, now: float | None = None) -> None:
        """A fresh failure (an event): its age starts now even if the text repeats."""
        now = time.monotonic() if now is None else now
        self._errors[backend_id] = _Error(error, now)
        self.history.append((now, backend_id, error))

    def update(self, health: Mapping[str, BackendHealth], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for backend_id, h in health.items():
            recovered = (
                h.healthy and h.breaker == "closed" and not h.ejected and not h.consecutive_failures
            )
            current = self._errors.get(backend_id)
            if recovered:
                self._errors.pop(backend_id, None)
            elif h.last_error and (current is None or current.text != h.last_error):
                self.failed(backend_id, h.last_error, now)

    def describe(self, backend_id: str, now: float | None = None) -> str:
        error = self._errors.get(backend_id)
        if error is None:
            return "-"
        now = time.monotonic() if now is None else now
        return f"{error.text} ({now - error.since:.0f}s ago)"


class ShareWindow:
    """Each backend's share of the leases served over the last ``seconds``."""

    def __init__(self, seconds: float = 3.0) -> None:
        self._seconds = seconds
        self._points: deque[tuple[float, dict[str, int]]] = deque()

    def update(self, stats: PoolStats, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        counts = {bid: b.acquires for bid, b in stats.backends.items()}
        self._points.append((now, counts))
        while len(self._points) > 2 and now - self._points[1][0] >= self._seconds:
            self._points.popleft()
        _, first = self._points[0]
        delta = {bid: n - first.get(bid, 0) for bid, n in counts.items()}
        total = sum(delta.values())
        return {bid: (n / total if total else 0.0) for bid, n in delta.items()}


def _health_cell(h: BackendHealth) -> Text:
    if not h.healthy:
        return Text("unhealthy", style="bold red")
    return Text("healthy", style="green")


_BREAKER_STYLE = {"closed": "green", "half-open": "yellow", "open": "bold red"}


def backend_table(
    health: Mapping[str, BackendHealth],
    stats: PoolStats,
    *,
    shares: Mapping[str, float] | None = None,
    errors: ErrorClock | None = None,
    title: str | None = None,
    served: Mapping[str, int] | None = None,
    error_column: bool = True,
) -> Table:
    """One row per backend: health, breaker, ejected, latency, active/idle, share of
    traffic, (served,) last error with its age (``error_column=False``: left out, for
    a narrow terminal; ``error_lines`` lists them instead)."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("backend", no_wrap=True)
    table.add_column("w", justify="right")
    table.add_column("health", no_wrap=True)
    table.add_column("breaker", no_wrap=True)
    table.add_column("ejected")
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("act/idle", justify="right")
    table.add_column("share", justify="right")
    if served is not None:
        table.add_column("served", justify="right")
    if error_column:
        table.add_column("last error", overflow="fold", ratio=1, min_width=16)
    now = time.monotonic()
    for backend_id, h in health.items():
        b = stats.backends.get(backend_id)
        share = shares.get(backend_id, 0.0) if shares is not None else (b.share if b else 0.0)
        row: list[Any] = [
            backend_id,
            str(h.weight),
            _health_cell(h),
            Text(h.breaker, style=_BREAKER_STYLE.get(h.breaker, "")),
            Text("yes", style="bold red") if h.ejected else "no",
            f"{h.latency:.1f}ms" if h.latency is not None else "-",
            f"{h.active}/{h.idle}",
            f"{share:.0%}",
        ]
        if served is not None:
            row.append(str(served.get(backend_id, 0)))
        if error_column:
            row.append(errors.describe(backend_id, now) if errors else h.last_error or "-")
        table.add_row(*row)
    return table


#: Below this many columns the errors go under the table, one line each.
WIDE = 110


def error_lines(health: Mapping[str, BackendHealth], errors: ErrorClock) -> Text:
    now = time.monotonic()
    lines = [
        f"  {backend_id}: {errors.describe(backend_id, now)}"
        for backend_id in health
        if errors.describe(backend_id, now) != "-"
    ]
    return Text("last errors:\n" + "\n".join(lines) if lines else "last errors: none")


def pool_line(stats: PoolStats) -> str:
    c = stats.connections
    return (
        f"{stats.size}/{stats.max_connections} open: {c.active} active, {c.idle} idle, "
        f"{c.connecting} connecting; {stats.pending_requests} waiting"
    )


class LiveView:
    """A pool's table for a live display: errors with their age, recent shares; the
    errors go under the table on a terminal narrower than ``WIDE``."""

    def __init__(self, pool: WebSocketPool) -> None:
        self.pool = pool
        self.errors = ErrorClock()
        self.shares = ShareWindow()

    def frame(self, console: Console, header: Callable[[PoolStats], Text]) -> Group:
        stats = self.pool.stats()
        health = self.pool.health_status()
        self.errors.update(health)
        wide = console.width >= WIDE
        table = backend_table(
            health, stats, shares=self.shares.update(stats), errors=self.errors, error_column=wide
        )
        if wide:
            return Group(header(stats), table)
        return Group(header(stats), table, error_lines(health, self.errors))
