"""wsclient: a client-side WebSocket connection pool and load balancer for asyncio.

::

    async with WebSocketPool(backends=["ws://a/ws", "ws://b/ws"]) as pool:
        async with pool.acquire() as conn:
            await conn.send_json({"hello": "world"})
            reply = await conn.receive_json(timeout=5)
"""

import logging
from typing import TYPE_CHECKING, Any

from wsclient._version import __version__
from wsclient.backend import BackendHealth
from wsclient.balancers import Balancer, balancer_names, register_balancer
from wsclient.codes import CloseCode, ConnectionState, describe_close_code
from wsclient.config import (
    ApiKeyAuth,
    Backend,
    BackoffConfig,
    BearerAuth,
    CircuitBreakerConfig,
    ConnectionOptions,
    HealthCheckConfig,
    HeartbeatConfig,
    PoolConfig,
)
from wsclient.connection import Connection, Message, MessageType, connect
from wsclient.errors import (
    AcquireTimeoutError,
    ConnectError,
    ConnectionClosedError,
    ConnectionReleasedError,
    MessageTooBigError,
    NoHealthyBackendError,
    PoolClosedError,
    PoolMisuseError,
    WSClientError,
)
from wsclient.event_names import EVENTS, EventName
from wsclient.fleet import SharedState
from wsclient.messaging import (
    Broadcaster,
    Envelope,
    JsonEnvelope,
    Multiplexer,
    RateLimit,
    Reconnected,
    RouteContext,
    RouteError,
    Router,
    Session,
    log_messages,
)
from wsclient.options import (
    BackendOptions,
    BackoffOptions,
    CircuitBreakerOptions,
    ConnectionOptionsDict,
    HealthCheckOptions,
    HeartbeatOptions,
    PoolOptions,
)
from wsclient.pool import WebSocketPool
from wsclient.resolvers import FileResolver, Resolver, ResolverError, StaticResolver

if TYPE_CHECKING:
    from wsclient.fleet.redis_state import RedisSharedState
    from wsclient.resolvers.dns import DnsResolver

# A library's loggers stay silent until the application configures logging
# (no "No handlers" fallback to stderr); see README "Operating".
logging.getLogger("wsclient").addHandler(logging.NullHandler())

__all__ = [
    "EVENTS",
    "AcquireTimeoutError",
    "ApiKeyAuth",
    "Backend",
    "BackendHealth",
    "BackendOptions",
    "BackoffConfig",
    "BackoffOptions",
    "Balancer",
    "BearerAuth",
    "Broadcaster",
    "CircuitBreakerConfig",
    "CircuitBreakerOptions",
    "CloseCode",
    "ConnectError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionOptions",
    "ConnectionOptionsDict",
    "ConnectionReleasedError",
    "ConnectionState",
    "DnsResolver",
    "Envelope",
    "EventName",
    "FileResolver",
    "HealthCheckConfig",
    "HealthCheckOptions",
    "HeartbeatConfig",
    "HeartbeatOptions",
    "JsonEnvelope",
    "Message",
    "MessageTooBigError",
    "MessageType",
    "Multiplexer",
    "NoHealthyBackendError",
    "PoolClosedError",
    "PoolConfig",
    "PoolMisuseError",
    "PoolOptions",
    "RateLimit",
    "Reconnected",
    "RedisSharedState",
    "Resolver",
    "ResolverError",
    "RouteContext",
    "RouteError",
    "Router",
    "Session",
    "SharedState",
    "StaticResolver",
    "WSClientError",
    "WebSocketPool",
    "__version__",
    "balancer_names",
    "connect",
    "describe_close_code",
    "log_messages",
    "register_balancer",
]


def __getattr__(name: str) -> Any:
    # Their extras (redis, dns) are imported on first use: ``import wsclient``
    # works without them.
    if name == "RedisSharedState":
        from wsclient import fleet

        return fleet.RedisSharedState
    if name == "DnsResolver":
        from wsclient import resolvers

        return resolvers.DnsResolver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
