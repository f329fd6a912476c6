"""Resolvers: where a pool's backends come from over time (SPEC §3).

``WebSocketPool(resolver=DnsResolver("ws://orders.internal:8080/ws"))``. The
pool asks the resolver, keeps the last good list when it fails, holds an
empty answer for ``empty_grace``, and feeds the rest to ``set_backends``.
``DnsResolver`` needs dnspython (``pip install wsclient[dns]``); it is
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsclient.resolvers.base import Resolution, Resolver, ResolverError
from wsclient.resolvers.file import FileResolver
from wsclient.resolvers.static import StaticResolver

if TYPE_CHECKING:
    from wsclient.resolvers.dns import DnsResolver

__all__ = [
    "DnsResolver",
    "FileResolver",
    "Resolution",
    "Resolver",
    "ResolverError",
    "StaticResolver",
]


def __getattr__(name: str) -> Any:
    if name == "DnsResolver":
        try:
            from wsclient.resolvers.dns import DnsResolver
        except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
            raise ImportError("DnsResolver needs dnspython: pip install 'wsclient[dns]'") from exc
        return DnsResolver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
