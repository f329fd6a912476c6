"""Fleet: backend state shared by many pool instances (SPEC §3).

``RedisSharedState`` needs the ``redis`` extra (``pip install wsclient[redis]``);
it is imported on first use so that ``import wsclient`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsclient.fleet.base import SharedState
from wsclient.fleet.shared_store import SharedStore

if TYPE_CHECKING:
    from wsclient.fleet.redis_state import RedisSharedState

__all__ = ["RedisSharedState", "SharedState", "SharedStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisSharedState":
        try:
            from wsclient.fleet.redis_state import RedisSharedState
        except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "RedisSharedState needs redis-py: pip install 'wsclient[redis]'"
            ) from exc
        return RedisSharedState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
