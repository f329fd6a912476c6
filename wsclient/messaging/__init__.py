"""Messaging on top of the pool (SPEC §5): sessions that survive failover,
multiplexed requests, broadcast channels and namespaces, routed messages."""

from wsclient.messaging.broadcast import Broadcaster
from wsclient.messaging.request import Envelope, JsonEnvelope, Multiplexer
from wsclient.messaging.router import RateLimit, RouteContext, RouteError, Router, log_messages
from wsclient.messaging.session import Reconnected, Session

__all__ = [
    "Broadcaster",
    "Envelope",
    "JsonEnvelope",
    "Multiplexer",
    "RateLimit",
    "Reconnected",
    "RouteContext",
    "RouteError",
    "Router",
    "Session",
    "log_messages",
]
