"""``Router``: ``{type, action, data}`` JSON messages dispatched to async handlers.

::

    router = Router()

    @router.route("chat", "send", model=ChatSend)
    async def chat_send(data: ChatSend, ctx: RouteContext) -> dict[str, Any]:
        return {"ok": True}                  # the reply's data; None: no reply

    await conn.serve(router)                 # or session.serve(router), or on a server:
    reply = await router.dispatch(raw_text)  # -> the reply's JSON text or None

A reply is ``{"type", "action", "data"}`` of the request, with its ``"id"``
when the request had one (so ``pool.request()`` on the other side matches it).
Failures never raise out of ``dispatch``: they are answered with an error
envelope, also ``{type, action, data}`` shaped::

    {"type": "error", "action": "invalid_data",
     "data": {"route": "chat.send", "message": "...", "details": [...]}, "id": 7}

with ``action`` one of ``bad_message`` (not JSON / not an envelope),
``unknown_route``, ``invalid_data`` (pydantic validation of ``data``; the
details are pydantic's errors without the input values), ``internal_error``
(a handler raised; logged, no details sent) or a ``RouteError``'s code
(raised by a handler or a middleware: ``rate_limited``, ``unauthorized``...).
``Router(error_reply=...)`` replaces the envelope builder (return None for no
reply), ``Router(unknown_route="ignore")`` leaves unknown routes unanswered.
An incoming ``"type": "error"`` message with no route of its own is never
answered (two routers would otherwise trade error envelopes forever).

Middleware wraps every dispatch, outermost first: ``async def mw(ctx,
call_next)`` returns ``await call_next(ctx)`` (or a reply of its own, or
raises ``RouteError``). ``log_messages()`` and ``RateLimit`` ship here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic

from wsclient.connection import Message, MessageType

logger = logging.getLogger("wsclient.router")

Handler = Callable[[Any, "RouteContext"], Awaitable[Any]]
CallNext = Callable[["RouteContext"], Awaitable[Any]]
Middleware = Callable[["RouteContext", CallNext], Awaitable[Any]]
ErrorReply = Callable[["RouteContext", str, str, list[Any]], dict[str, Any] | None]


class RouteError(Exception):
    """Raised by a handler or middleware: answered with an error envelope of ``code``."""

    def __init__(self, code: str, message: str = "", details: list[Any] | None = None) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code
        self.details = details or []


@dataclass
class RouteContext:
    """One incoming message on its way through middleware to its handler."""

    type: str
    action: str
    data: Any
    """The ``data`` field: raw until the handler's model validates it."""
    id: Any = None
    raw: dict[str, Any] = field(default_factory=dict)
    connection: Any = None
    """What the message came on (a Connection or Session), None for ``dispatch()`` alone."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space for middleware (an authenticated user, say)."""

    @property
    def route(self) -> str:
        return f"{self.type}.{self.action}"


@dataclass(frozen=True)
class _Route:
    handler: Handler
    model: type[pydantic.BaseModel] | None


def default_error_reply(
    ctx: RouteContext, code: str, message: str, details: list[Any]
) -> dict[str, Any]:
    return {
        "type": "error",
        "action": code,
        "data": {"route": ctx.route, "message": message, "details": details},
    }


class Router:
    """Routes ``{type, action, data}`` messages to handlers; see the module docstring."""

    def __init__(
        self,
        *,
        unknown_route: Literal["error", "ignore"] = "error",
        error_reply: ErrorReply = default_error_reply,
        send_timeout: float = 5.0,
    ) -> None:
        if unknown_route not in ("error", "ignore"):
            raise ValueError(f"unknown_route must be 'error' or 'ignore', not {unknown_route!r}")
        self._routes: dict[tuple[str, str], _Route] = {}
        self._middleware: list[Middleware] = []
        self._unknown = unknown_route
        self._error_reply = error_reply
        self._send_timeout = send_timeout
        self._chain: CallNext = self._call_handler

    def route(
        self, type: str, action: str, *, model: type[pydantic.BaseModel] | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: ``handler(data, ctx)`` for messages of ``type`` and ``action``."""
        if (type, action) in self._routes:
            raise ValueError(f"route {type}.{action} is already registered")

        def register(handler: Handler) -> Handler:
            if not asyncio.iscoroutinefunction(handler):
                raise TypeError(f"route {type}.{action}: the handler must be an async function")
            self._routes[(type, action)] = _Route(handler, model)
            return handler

        return register

    def use(self, middleware: Middleware) -> Middleware:
        """Add a middleware; the first added runs outermost."""
        self._middleware.append(middleware)
        chain: CallNext = self._call_handler
        for mw in reversed(self._middleware):
            chain = _bind(mw, chain)
        self._chain = chain
        return middleware

    @property
    def routes(self) -> list[str]:
        return [f"{t}.{a}" for t, a in self._routes]

    # -- dispatching -----------------------------------------------------------------

    async def dispatch(self, message: str | bytes | Message, connection: Any = None) -> str | None:
        """Handle one message; return the reply's JSON text (or None: no reply)."""
        reply = await self.handle(message, connection)
        return None if reply is None else json.dumps(reply)

    async def handle(
        self, message: str | bytes | Message, connection: Any = None
    ) -> dict[str, Any] | None:
        """As ``dispatch`` but the reply is returned as a dict."""
        ctx = _context(message, connection)
        if isinstance(ctx, str):  # not an envelope
            blank = RouteContext(type="", action="", data=None, connection=connection)
            return self._error(blank, "bad_message", ctx, [])
        try:
            result = await self._chain(ctx)
        except RouteError as exc:
            return self._error(ctx, exc.code, exc.message, exc.details)
        except _Invalid as exc:
            return self._error(ctx, "invalid_data", "data failed validation", exc.details)
        except _Unknown:
            if self._unknown == "ignore" or ctx.type == "error":
                return None  # an error is never answered with an error: no ping-pong
            return self._error(ctx, "unknown_route", f"no handler for {ctx.route}", [])
        except Exception:
            logger.exception("handler for %s failed", ctx.route)
            return self._error(ctx, "internal_error", "the handler failed", [])
        if result is None:
            return None
        reply: dict[str, Any] = {"type": ctx.type, "action": ctx.action, "data": result}
        if ctx.id is not None:
            reply["id"] = ctx.id
        return reply

    def _error(
        self, ctx: RouteContext, code: str, message: str, details: list[Any]
    ) -> dict[str, Any] | None:
        reply = self._error_reply(ctx, code, message, details)
        if reply is not None and ctx.id is not None:
            reply = {**reply, "id": ctx.id}
        return reply

    async def _call_handler(self, ctx: RouteContext) -> Any:
        route = self._routes.get((ctx.type, ctx.action))
        if route is None:
            raise _Unknown
        data = ctx.data
        if route.model is not None:
            try:
                data = route.model.model_validate(data)
            except pydantic.ValidationError as exc:
                details = exc.errors(include_url=False, include_input=False, include_context=False)
                raise _Invalid(json.loads(json.dumps(details, default=str))) from None
            ctx.data = data
        result = await route.handler(data, ctx)
        if isinstance(result, pydantic.BaseModel):
            return result.model_dump(mode="json")
        return result

    async def serve(self, source: Any) -> None:
        """Dispatch every message of ``source`` (a Connection or Session) and send the replies.

        Messages are handled one at a time, in order. Returns when the source
        ends normally; ``Reconnected`` markers of a session are skipped.
        """
        async for item in source:
            if not isinstance(item, Message):
                continue
            reply = await self.dispatch(item, source)
            if reply is not None:
                await source.send(reply, timeout=self._send_timeout)


class _Unknown(Exception):
    pass


class _Invalid(Exception):
    def __init__(self, details: list[Any]) -> None:
        self.details = details


def _bind(mw: Middleware, call_next: CallNext) -> CallNext:
    async def step(ctx: RouteContext) -> Any:
        return await mw(ctx, call_next)

    return step


def _context(message: str | bytes | Message, connection: Any) -> RouteContext | str:
    """The context of an envelope, or why it is not one."""
    if isinstance(message, Message):
        if message.type is not MessageType.TEXT:
            return "binary messages are not routed"
        message = message.data
    try:
        obj = json.loads(message)
    except (ValueError, TypeError):
        return "not JSON"
    if not isinstance(obj, dict):
        return "not a JSON object"
    kind, action = obj.get("type"), obj.get("action")
    if not isinstance(kind, str) or not isinstance(action, str):
        return "'type' and 'action' must be strings"
    return RouteContext(
        type=kind,
        action=action,
        data=obj.get("data"),
        id=obj.get("id"),
        raw=obj,
        connection=connection,
    )


# ----------------------------------------------------------------------------- middleware


def log_messages(log: logging.Logger | None = None, level: int = logging.DEBUG) -> Middleware:
    """Middleware: one log line per message with its route and how long it took."""
    target = log or logger

    async def middleware(ctx: RouteContext, call_next: CallNext) -> Any:
        start = time.perf_counter()
        try:
            return await call_next(ctx)
        finally:
            target.log(
                level, "%s handled in %.2f ms", ctx.route, (time.perf_counter() - start) * 1e3
            )

    return middleware


class RateLimit:
    """Middleware: a token bucket per connection (``per_second``, bursts of ``burst``).

    A message over the limit is answered with the ``rate_limited`` error envelope.
    """

    def __init__(self, per_second: float, burst: int | None = None) -> None:
        if not per_second > 0:
            raise ValueError(f"per_second must be > 0, got {per_second!r}")
        self.per_second = per_second
        self.burst = burst if burst is not None else max(1, int(per_second))
        self._buckets: dict[int, tuple[float, float]] = {}

    async def __call__(self, ctx: RouteContext, call_next: CallNext) -> Any:
        key = id(ctx.connection)
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RouteError("rate_limited", f"more than {self.per_second} messages a second")
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 65536:  # connections come and go: forget the oldest
            self._buckets.pop(next(iter(self._buckets)))
        return await call_next(ctx)
