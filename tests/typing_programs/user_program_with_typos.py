"""A user's program with typos: ``mypy --strict`` must reject each marked line.

Excluded from ``make lint``'s mypy run; tests/test_typing.py checks that the
line after each ``# mypy:`` comment, and only those, is reported with the
comment's text.
"""

from __future__ import annotations

import wsclient
from wsclient import WebSocketPool


def on_healthy(backend_id: str) -> None:
    print(backend_id)


def on_closed(backend_id: str, connection_id: str) -> None:
    print(backend_id, connection_id)


async def main() -> None:
    # mypy: Unexpected keyword argument "max_conections" for "WebSocketPool"
    pool = WebSocketPool(backends=["ws://127.0.0.1:9001/ws"], max_conections=10)
    # mypy: Argument "max_connections" to "WebSocketPool" has incompatible type "str"
    WebSocketPool(max_connections="10")
    # mypy: Argument "health_check" to "WebSocketPool" has incompatible type "dict[str, int]"
    WebSocketPool(health_check={"intervall": 5})
    # mypy: Argument "on_idle_message" to "WebSocketPool" has incompatible type "Literal['drop']"
    WebSocketPool(on_idle_message="drop")
    # mypy: No overload variant of "on" of "EventSource" matches argument types "str"
    pool.on("backend-unhelthy", on_healthy)
    # mypy: No overload variant of "on" of "EventSource" matches argument types "str", "Callable[[str, str], None]"
    pool.on("connection-closed", on_closed)
    # mypy: Unexpected keyword argument "conect_timeout" for "connect"
    await wsclient.connect("ws://127.0.0.1:9001/ws", conect_timeout=1)
