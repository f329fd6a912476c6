"""Typed ``on`` / ``off`` for pool events: each event name with its listener's signature.

``WebSocketPool`` inherits these. The overloads let ``mypy --strict`` reject
an unknown event name (``"backend-unhelthy"``) and a listener whose
parameters do not fit the event; at run time ``on`` is
``EventEmitter.on``, which checks the name too. A listener may be sync or
async (it returns ``object``: ``None`` or an awaitable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar, overload

from wsclient.connection import Message
from wsclient.event_names import (
    BackendEjectedEvent,
    BackendEvent,
    BackendUnhealthyEvent,
    ConnectionClosedEvent,
    ConnectionOpenEvent,
    EventName,
    IdleMessageEvent,
)
from wsclient.events import EventEmitter

#: ``(backend_id)``
BackendListener: TypeAlias = Callable[[str], object]
#: ``(backend_id, error)``
BackendUnhealthyListener: TypeAlias = Callable[[str, str | None], object]
#: ``(backend_id, seconds, error)``
BackendEjectedListener: TypeAlias = Callable[[str, float, str], object]
#: ``(backend_id, connection_id)``
ConnectionOpenListener: TypeAlias = Callable[[str, str], object]
#: ``(backend_id, connection_id, code, reason)``
ConnectionClosedListener: TypeAlias = Callable[[str, str, int | None, str], object]
#: ``(backend_id, connection_id, message)``
IdleMessageListener: TypeAlias = Callable[[str, str, Message], object]

_B = TypeVar("_B", bound=BackendListener)
_U = TypeVar("_U", bound=BackendUnhealthyListener)
_E = TypeVar("_E", bound=BackendEjectedListener)
_O = TypeVar("_O", bound=ConnectionOpenListener)
_C = TypeVar("_C", bound=ConnectionClosedListener)
_I = TypeVar("_I", bound=IdleMessageListener)


class EventSource:
    """``on(event, callback)`` / ``off(event, callback)`` over an ``EventEmitter``."""

    _events: EventEmitter

    @overload
    def on(self, event: BackendEvent, callback: _B) -> _B: ...
    @overload
    def on(self, event: BackendUnhealthyEvent, callback: _U) -> _U: ...
    @overload
    def on(self, event: BackendEjectedEvent, callback: _E) -> _E: ...
    @overload
    def on(self, event: ConnectionOpenEvent, callback: _O) -> _O: ...
    @overload
    def on(self, event: ConnectionClosedEvent, callback: _C) -> _C: ...
    @overload
    def on(self, event: IdleMessageEvent, callback: _I) -> _I: ...
    def on(self, event: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``callback`` (sync or async) on ``event``; returns ``callback``.

        The events and their listeners' arguments are in ``wsclient.EVENTS``
        (and the README's Events table). An unknown name raises ``ValueError``.
        """
        return self._events.on(event, callback)

    def off(self, event: EventName, callback: Callable[..., object]) -> None:
        """Remove ``callback``; removing one that is not registered is a no-op."""
        self._events.off(event, callback)
