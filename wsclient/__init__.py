"""wsclient: a client-side WebSocket connection pool and load balancer for asyncio.

::

    async with WebSocketPool(backends=["ws://a/ws", "ws://b/ws"]) as pool:
        async with pool.acquire() as conn:
            await conn.send_json({"hello": "world"})
            reply = await conn.receive_json(timeout=5)
"""

from typing import TYPE_CHECKING, Any

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
from wsclient.event_names import EVENTS
from wsclient.fleet import SharedState
from wsclient.pool import WebSocketPool
from wsclient.resolvers import FileResolver, Resolver, ResolverError, StaticResolver

if TYPE_CHECKING:
    from wsclient.fleet.redis_state import RedisSharedState
    from wsclient.resolvers.dns import DnsResolver

__version__ = "0.1.0"

__all__ = [
    "EVENTS",
    "AcquireTimeoutError",
    "ApiKeyAuth",
    "Backend",
    "BackendHealth",
    "BackoffConfig",
    "Balancer",
    "BearerAuth",
    "CircuitBreakerConfig",
    "CloseCode",
    "ConnectError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionOptions",
    "ConnectionReleasedError",
    "ConnectionState",
    "DnsResolver",
    "FileResolver",
    "HealthCheckConfig",
    "HeartbeatConfig",
    "Message",
    "MessageTooBigError",
    "MessageType",
    "NoHealthyBackendError",
    "PoolClosedError",
    "PoolConfig",
    "PoolMisuseError",
    "RedisSharedState",
    "Resolver",
    "ResolverError",
    "SharedState",
    "StaticResolver",
    "WSClientError",
    "WebSocketPool",
    "balancer_names",
    "connect",
    "describe_close_code",
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
