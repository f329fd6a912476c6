"""``Broadcaster``: channels and namespaces of connections, and concurrent sends to them.

Members are anything with ``send(data, timeout=)``, ``close(code, reason)`` and
``connected`` (a :class:`~wsclient.Connection`) or ``closed`` (a
:class:`~wsclient.Session`, which stays a member while it reconnects).

- Channels: ``create_channel(name)``, ``subscribe(member, name)``,
  ``unsubscribe``, ``broadcast(name, message, exclude=None, filter=None)``.
- Namespaces: ``add(member, namespace, id)`` (an id is unique in its
  namespace), ``send(namespace, id, message)``, ``close_all(namespace)``,
  ``drain(namespace, per_second)``; ``on_empty(namespace)`` is called when a
  namespace loses its last member.

Every send of a broadcast runs at once, each bounded by ``timeout``; the
result maps each member to ``None`` or the exception of its send, so a slow or
failing member never delays the others beyond the timeout and never fails the
broadcast. Members found closed (at any operation, or by a send failing with
``ConnectionClosedError``) leave every channel and namespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from wsclient.codes import CloseCode, check_close_code
from wsclient.errors import ConnectionClosedError, ConnectionReleasedError, WSClientError

logger = logging.getLogger("wsclient.broadcast")

DEFAULT_SEND_TIMEOUT = 5.0


class Member(Protocol):
    """What a broadcaster sends to: a Connection or a Session."""

    async def send(self, data: str | bytes, timeout: float | None = None) -> None: ...

    async def close(self, code: int = ..., reason: str = ...) -> None: ...


OnEmpty = Callable[[str], Any]
Results = dict[Any, BaseException | None]


def _alive(member: Any) -> bool:
    closed = getattr(member, "closed", None)
    if isinstance(closed, bool):
        return not closed
    return bool(getattr(member, "connected", True))


def encode(message: Any) -> str | bytes:
    """str and bytes go as they are (text / binary); anything else as JSON text, encoded once."""
    if isinstance(message, str | bytes):
        return message
    return json.dumps(message)


class Broadcaster:
    """Channels and namespaces of connections (see the module docstring)."""

    def __init__(self, *, on_empty: OnEmpty | None = None, timeout: float = DEFAULT_SEND_TIMEOUT):
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self.on_empty = on_empty
        self.timeout = timeout
        self._channels: dict[str, dict[Any, None]] = {}  # insertion-ordered sets
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._places: dict[Any, tuple[set[str], set[tuple[str, str]]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return (
            f"<Broadcaster {len(self._channels)} channels, {len(self._namespaces)} namespaces, "
            f"{len(self._places)} members>"
        )

    # -- membership ------------------------------------------------------------------

    def _place(self, member: Any) -> tuple[set[str], set[tuple[str, str]]]:
        place = self._places.get(member)
        if place is None:
            place = self._places[member] = (set(), set())
        return place

    def create_channel(self, name: str) -> None:
        """Make a channel (idempotent)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a channel name is a non-empty str")
        self._channels.setdefault(name, {})

    def channels(self) -> list[str]:
        return list(self._channels)

    def subscribe(self, member: Member, name: str) -> None:
        """Add ``member`` to channel ``name`` (which must exist: ``create_channel`` first)."""
        channel = self._channels.get(name)
        if channel is None:
            raise KeyError(f"no channel {name!r}; create_channel({name!r}) first")
        if not _alive(member):
            raise ConnectionClosedError(None, "cannot subscribe a closed connection")
        channel[member] = None
        self._place(member)[0].add(name)

    def unsubscribe(self, member: Member, name: str) -> None:
        channel = self._channels.get(name)
        if channel is not None and channel.pop(member, 0) is None:
            self._place(member)[0].discard(name)
            self._forget_if_nowhere(member)

    def subscribers(self, name: str) -> list[Any]:
        """The live members of channel ``name`` (closed ones leave now)."""
        channel = self._channels.get(name)
        if channel is None:
            raise KeyError(f"no channel {name!r}")
        self._prune(list(channel))
        return list(channel)

    def add(self, member: Member, namespace: str, id: str) -> None:
        """Register ``member`` as ``id`` in ``namespace`` (ids are unique per namespace)."""
        if not _alive(member):
            raise ConnectionClosedError(None, "cannot add a closed connection")
        members = self._namespaces.setdefault(namespace, {})
        current = members.get(id)
        if current is not None and current is not member:
            if _alive(current):
                raise ValueError(f"id {id!r} is already taken in namespace {namespace!r}")
            self.remove(current)
            members = self._namespaces.setdefault(namespace, {})
        members[id] = member
        self._place(member)[1].add((namespace, id))

    def members(self, namespace: str) -> dict[str, Any]:
        """``{id: member}`` of ``namespace`` (closed ones leave now)."""
        self._prune(list(self._namespaces.get(namespace, {}).values()))
        return dict(self._namespaces.get(namespace, {}))

    def remove(self, member: Member) -> None:
        """Take ``member`` out of every channel and namespace; ``on_empty`` as needed."""
        place = self._places.pop(member, None)
        if place is None:
            return
        for name in place[0]:
            self._channels.get(name, {}).pop(member, None)
        for namespace, member_id in place[1]:
            members = self._namespaces.get(namespace)
            if members is not None and members.get(member_id) is member:
                del members[member_id]
                if not members:
                    del self._namespaces[namespace]
                    self._emptied(namespace)

    def _forget_if_nowhere(self, member: Any) -> None:
        place = self._places.get(member)
        if place is not None and not place[0] and not place[1]:
            del self._places[member]

    def _prune(self, members: Iterable[Any]) -> None:
        for member in members:
            if not _alive(member):
                self.remove(member)

    def _emptied(self, namespace: str) -> None:
        callback = self.on_empty
        if callback is None:
            return
        try:
            result = callback(namespace)
        except Exception:
            logger.exception("on_empty callback failed for namespace %r", namespace)
            return
        if asyncio.iscoroutine(result):
            task = asyncio.get_running_loop().create_task(_logged(result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- sending ---------------------------------------------------------------------

    async def _send_one(
        self, member: Any, data: str | bytes, timeout: float
    ) -> BaseException | None:
        try:
            async with asyncio.timeout(timeout):
                await member.send(data, timeout=timeout)
        except (ConnectionClosedError, ConnectionReleasedError) as exc:
            self.remove(member)
            return exc
        except (WSClientError, OSError, TimeoutError, ValueError, TypeError) as exc:
            return exc
        return None

    async def _send_all(self, members: list[Any], message: Any, timeout: float | None) -> Results:
        limit = self.timeout if timeout is None else timeout
        data = encode(message)
        outcomes = await asyncio.gather(*(self._send_one(m, data, limit) for m in members))
        return dict(zip(members, outcomes, strict=True))

    async def broadcast(
        self,
        name: str,
        message: Any,
        exclude: Any = None,
        filter: Callable[[Any], bool] | None = None,
        *,
        timeout: float | None = None,
    ) -> Results:
        """Send ``message`` to every live member of channel ``name`` at once.

        ``exclude``: a member or an iterable of members to skip; ``filter(member)``
        → False skips one. Returns ``{member: None or the exception}``; every send
        is bounded by ``timeout`` (default: the broadcaster's).
        """
        members = self.subscribers(name)
        if exclude is not None:
            skip = (
                {id(exclude)}
                if not isinstance(exclude, list | tuple | set | frozenset)
                else {id(m) for m in exclude}
            )
            members = [m for m in members if id(m) not in skip]
        if filter is not None:
            members = [m for m in members if filter(m)]
        return await self._send_all(members, message, timeout)

    async def send(
        self, namespace: str, id: str, message: Any, *, timeout: float | None = None
    ) -> None:
        """Send to the member registered as ``id`` in ``namespace``; its error is raised."""
        member = self._namespaces.get(namespace, {}).get(id)
        if member is None or not _alive(member):
            if member is not None:
                self.remove(member)
            raise KeyError(f"no connection with id {id!r} in namespace {namespace!r}")
        error = await self._send_one(
            member, encode(message), self.timeout if timeout is None else timeout
        )
        if error is not None:
            raise error

    async def broadcast_namespace(
        self, namespace: str, message: Any, *, timeout: float | None = None
    ) -> Results:
        """Send to every live member of ``namespace`` at once (as ``broadcast``)."""
        return await self._send_all(list(self.members(namespace).values()), message, timeout)

    # -- closing ---------------------------------------------------------------------

    async def _close_one(self, member: Any, code: int, reason: str) -> None:
        self.remove(member)
        try:
            await member.close(code, reason)
        except (WSClientError, OSError) as exc:
            logger.debug("closing a member failed: %s", exc)

    async def close_all(
        self, namespace: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> int:
        """Close every member of ``namespace`` at once; returns how many."""
        check_close_code(code)
        members = list(self._namespaces.get(namespace, {}).values())
        await asyncio.gather(*(self._close_one(m, code, reason) for m in members))
        return len(members)

    async def drain(
        self,
        namespace: str,
        per_second: float,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "draining",
    ) -> int:
        """Close every member of ``namespace``, evenly paced at ``per_second``.

        The i-th close starts at ``i / per_second`` seconds (scheduled from the
        start, so the rate does not drift); closes run concurrently, each
        bounded by its connection's ``close_timeout``. Returns how many.
        """
        if not (per_second > 0 and math.isfinite(per_second)):
            raise ValueError(f"per_second must be a finite number > 0, got {per_second!r}")
        check_close_code(code)
        members = list(self._namespaces.get(namespace, {}).values())
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        closes: list[asyncio.Task[None]] = []
        try:
            for i, member in enumerate(members):
                delay = start + i / per_second - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                closes.append(loop.create_task(self._close_one(member, code, reason)))
        finally:
            if closes:
                await asyncio.wait(closes)
        return len(members)

    async def aclose(self) -> None:
        """Wait for (then cancel) pending async ``on_empty`` callbacks."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


async def _logged(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except Exception:
        logger.exception("on_empty callback failed")
