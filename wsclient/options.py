"""Keyword options as ``TypedDict``s, so a type checker sees every option.

``WebSocketPool(**options: Unpack[PoolOptions])`` and ``connect(url,
**options: Unpack[ConnectionOptionsDict])`` use these: ``mypy --strict``
rejects ``max_conections=`` (a typo) or ``max_connections="10"`` before the
program runs. They describe what a caller may pass (a dict or a model for a
nested option, any sequence of backends); the pydantic models in
``config.py`` stay the only place where values are checked and defaulted.
``tests/test_typing.py`` keeps the keys here equal to the models' fields.
"""

import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Required, TypeAlias, TypedDict

from pydantic import SecretStr

from wsclient.config import (
    ApiKeyAuth,
    AuthProvider,
    Backend,
    BackoffConfig,
    BearerAuth,
    CircuitBreakerConfig,
    HealthCheckConfig,
    HeartbeatConfig,
)

#: What ``auth=`` accepts: a string or ``SecretStr`` is a bearer token.
AuthOption: TypeAlias = str | SecretStr | BearerAuth | ApiKeyAuth | AuthProvider


class HeartbeatOptions(TypedDict, total=False):
    """``heartbeat=`` as a dict (``HeartbeatConfig``)."""

    interval: float | None
    timeout: float


class HealthCheckOptions(TypedDict, total=False):
    """``health_check=`` as a dict (``HealthCheckConfig``)."""

    enabled: bool
    interval: float
    timeout: float
    unhealthy_threshold: int
    healthy_threshold: int
    path: str | None
    jitter: float


class CircuitBreakerOptions(TypedDict, total=False):
    """``circuit_breaker=`` as a dict (``CircuitBreakerConfig``)."""

    enabled: bool
    failure_threshold: int
    recovery_timeout: float
    half_open_max_trials: int


class BackoffOptions(TypedDict, total=False):
    """``reconnect=`` as a dict (``BackoffConfig``)."""

    initial_delay: float
    multiplier: float
    jitter: float
    max_delay: float


class ConnectionOptionsDict(TypedDict, total=False):
    """The keywords of ``connect()``; also pool options (``ConnectionOptions``)."""

    max_message_size: int
    compression: bool
    protocols: Sequence[str]
    headers: Mapping[str, str]
    auth: AuthOption | None
    connect_timeout: float
    close_timeout: float
    ssl: ssl.SSLContext | bool | None
    heartbeat: HeartbeatConfig | HeartbeatOptions
    server_hostname: str | None
    transport: Literal["aiohttp", "picows"]


class BackendOptions(TypedDict, total=False):
    """One entry of ``backends=`` as a dict (``Backend``); ``None`` inherits the pool's."""

    id: str
    url: Required[str]
    weight: int
    max_message_size: int | None
    compression: bool | None
    protocols: Sequence[str] | None
    headers: Mapping[str, str] | None
    auth: AuthOption | None
    connect_timeout: float | None
    close_timeout: float | None
    ssl: ssl.SSLContext | bool | None
    heartbeat: HeartbeatConfig | HeartbeatOptions | None
    server_hostname: str | None
    transport: Literal["aiohttp", "picows"] | None


class PoolOptions(ConnectionOptionsDict, total=False):
    """The keywords of ``WebSocketPool(...)`` (``PoolConfig``)."""

    backends: Sequence[Backend | BackendOptions | str]
    load_balancing: str
    min_connections: int
    max_connections: int
    acquire_timeout: float | None
    idle_timeout: float | None
    max_lifetime: float | None
    validate_on_checkout: bool
    shutdown_timeout: float
    health_check: HealthCheckConfig | HealthCheckOptions
    circuit_breaker: CircuitBreakerConfig | CircuitBreakerOptions
    reconnect: BackoffConfig | BackoffOptions
    panic_threshold: float | None
    slow_start: float | None
    on_idle_message: Literal["discard", "close"]
    init: Callable[[Any], Awaitable[Any]] | None  # async init(conn: Connection)
