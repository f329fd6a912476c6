"""``StaticResolver``: a fixed list, resolved once (what ``backends=`` amounts to)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from wsclient.config import Backend
from wsclient.resolvers.base import Resolution

__all__ = ["StaticResolver", "as_backend"]


def as_backend(item: Backend | str | Mapping[str, Any]) -> Backend:
    if isinstance(item, Backend):
        return item
    if isinstance(item, str):
        return Backend(url=item)
    if isinstance(item, Mapping):
        return Backend.model_validate(item)
    raise TypeError(f"expected a Backend, dict or URL, not {type(item).__name__}")


class StaticResolver:
    """``StaticResolver(["ws://a/ws", Backend(...)])``: the same list, once."""

    empty_grace = 0.0
    retry_delay = 1.0
    timeout = 1.0

    def __init__(self, backends: Iterable[Backend | str | Mapping[str, Any]]) -> None:
        self.backends = [as_backend(b) for b in backends]

    async def resolve(self) -> Resolution:
        return Resolution(list(self.backends), math.inf)

    def describe(self) -> str:
        return f"static ({len(self.backends)} backends)"

    def __repr__(self) -> str:
        return f"<StaticResolver {len(self.backends)} backends>"
