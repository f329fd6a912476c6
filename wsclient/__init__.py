"""wsclient: a client-side WebSocket connection pool and load balancer for asyncio.

::

    async with WebSocketPool(backends=["ws://a/ws", "ws://b/ws"]) as pool:
        async with pool.acquire() as conn:
            await conn.send_json({"hello": "world"})
            reply = await conn.receive_json(timeout=5)
"""

import logging

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
    "EventName",
    "HealthCheckConfig",
    "HealthCheckOptions",
    "HeartbeatConfig",
    "HeartbeatOptions",
    "Message",
    "MessageTooBigError",
    "MessageType",
    "NoHealthyBackendError",
    "PoolClosedError",
    "PoolConfig",
    "PoolMisuseError",
    "PoolOptions",
    "WSClientError",
    "WebSocketPool",
    "__version__",
    "balancer_names",
    "connect",
    "describe_close_code",
    "register_balancer",
]
