"""The ``Resolver`` protocol: where a pool's backend list comes from over time.

gRPC's split: a resolver turns a name into addresses and knows nothing of
balancing; the pool feeds what it yields to ``set_backends``. A resolver
answers one question, "what is the list now, and when should I be asked
again?"; keeping the last good list, holding an empty answer and reporting
errors are the runner's job (``runner.py``), the same for every resolver.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

from wsclient.config import Backend

__all__ = ["Resolution", "Resolver", "ResolverError", "check_seconds"]


class Resolution(NamedTuple):
    backends: list[Backend]
    next_in: float
    """Seconds until the resolver wants to be asked again; ``math.inf``: never."""


class ResolverError(Exception):
    """A resolution failed; the message says why (no credential in it)."""


class Resolver(Protocol):
    empty_grace: float
    """How long an empty answer is held (the last good list kept) before it applies."""
    retry_delay: float
    """Seconds between attempts after a failure."""
    timeout: float
    """Bound of one resolution."""

    async def resolve(self) -> Resolution: ...

    def describe(self) -> str:
        """What is resolved, for logs and status (no credential in it)."""
        ...


def check_seconds(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, int | float) and not isinstance(value, bool)) or not (
        value > 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
