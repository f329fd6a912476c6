"""wsclient: a client-side WebSocket connection pool and load balancer for asyncio.

::

    async with WebSocketPool(backends=["ws://a/ws", "ws://b/ws"]) as pool:
        async with pool.acquire() as conn:
            await conn.send_json({"hello": "world"})
            reply = await conn.receive_json(timeout=5)
"""

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
from wsclient.pool import WebSocketPool

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
    "Broadcaster",
    "CircuitBreakerConfig",
    "CloseCode",
    "ConnectError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionOptions",
    "ConnectionReleasedError",
    "ConnectionState",
    "Envelope",
    "HealthCheckConfig",
    "HeartbeatConfig",
    "JsonEnvelope",
    "Message",
    "MessageTooBigError",
    "MessageType",
    "Multiplexer",
    "NoHealthyBackendError",
    "PoolClosedError",
    "PoolConfig",
    "PoolMisuseError",
    "RateLimit",
    "Reconnected",
    "RouteContext",
    "RouteError",
    "Router",
    "Session",
    "WSClientError",
    "WebSocketPool",
    "balancer_names",
    "connect",
    "describe_close_code",
    "log_messages",
    "register_balancer",
]
