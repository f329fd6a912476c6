"""pytest fixtures for :mod:`wsclient.testing` (loaded automatically as the ``wsclient`` plugin).

Installing ``wsclient-pool`` registers this module as a pytest plugin, so any project can use
these fixtures without copying code (``pytest-asyncio`` must be installed):

``wsclient_backend``
    One started in-process :class:`~wsclient.testing.BackendServer`.

``wsclient_backends``
    An async factory: ``servers = await wsclient_backends(3)`` returns three started
    backends; ``await wsclient_backends(2, process=True)`` returns
    :class:`~wsclient.testing.BackendProcess` instances.  Extra keyword arguments go to the
    constructor.

``wsclient_fault_proxy``
    An async factory: ``proxy = await wsclient_fault_proxy(backend)`` returns a started
    :class:`~wsclient.testing.FaultProxy` in front of a backend (or of a ``(host, port)``).

``wsclient_interop_server``
    An async factory: ``server = await wsclient_interop_server("uvicorn")`` returns a
    started :class:`~wsclient.testing.interop.InteropServer` (a third-party server in a
    child process); extra keyword arguments go to the constructor.

``wsclient_interop_kind``
    Parametrised over :data:`~wsclient.testing.interop.INTEROP_KINDS`: a test that asks
    for it runs once per kind (``await wsclient_interop_server(wsclient_interop_kind)``).

All fixtures are function-scoped and stop everything they started at teardown.  The
factories are also available as async context managers, :func:`backends_factory`,
:func:`fault_proxy_factory` and :func:`interop_server_factory`, for code that does not use
pytest fixtures.

Example (the marker is needed in pytest-asyncio's default strict mode)::

    @pytest.mark.asyncio
    async def test_failover(wsclient_backends, wsclient_fault_proxy):
        primary, spare = await wsclient_backends(2)
        proxy = await wsclient_fault_proxy(primary)
        proxy.blackhole()
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, overload

if TYPE_CHECKING:
    from wsclient.testing import BackendProcess, BackendServer, FaultProxy
    from wsclient.testing.interop import InteropKind, InteropServer

__all__ = [
    "BackendsFactory",
    "FaultProxyFactory",
    "InteropServerFactory",
    "backends_factory",
    "fault_proxy_factory",
    "interop_server_factory",
    "wsclient_backend",
    "wsclient_backends",
    "wsclient_fault_proxy",
    "wsclient_interop_kind",
    "wsclient_interop_server",
]


class BackendsFactory(Protocol):
    """Type of the ``wsclient_backends`` fixture."""

    @overload
    async def __call__(
        self, n: int = 1, *, process: Literal[False] = False, **kwargs: Any
    ) -> list[BackendServer]: ...

    @overload
    async def __call__(
        self, n: int = 1, *, process: Literal[True], **kwargs: Any
    ) -> list[BackendProcess]: ...

    async def __call__(
        self, n: int = 1, *, process: bool = False, **kwargs: Any
    ) -> list[BackendServer] | list[BackendProcess]:
        """Start ``n`` backends (child processes if ``process``) and return them."""


class FaultProxyFactory(Protocol):
    """Type of the ``wsclient_fault_proxy`` fixture."""

    async def __call__(
        self, target: BackendServer | BackendProcess | tuple[str, int], **kwargs: Any
    ) -> FaultProxy:
        """Start a :class:`~wsclient.testing.FaultProxy` in front of ``target``."""


class InteropServerFactory(Protocol):
    """Type of the ``wsclient_interop_server`` fixture."""

    async def __call__(self, kind: InteropKind = "websockets", **kwargs: Any) -> InteropServer:
        """Start an :class:`~wsclient.testing.interop.InteropServer` of ``kind``."""


async def _stop_all(stoppers: Iterable[Callable[[], Awaitable[None]]]) -> None:
    """Run every stop coroutine even if some fail; re-raise the first failure."""
    results = await asyncio.gather(*(stop() for stop in stoppers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


@contextlib.asynccontextmanager
async def backends_factory() -> AsyncIterator[BackendsFactory]:
    """Async context manager behind ``wsclient_backends``, usable without pytest.

    ``async with backends_factory() as make: servers = await make(3)`` - every backend
    started through ``make`` is stopped when the block exits.
    """
    from wsclient.testing import BackendProcess, BackendServer

    created: list[BackendServer | BackendProcess] = []

    async def factory(
        n: int = 1, *, process: bool = False, **kwargs: Any
    ) -> list[BackendServer] | list[BackendProcess]:
        if n < 1:
            raise ValueError("n must be >= 1")
        if process:
            procs = [BackendProcess(**kwargs) for _ in range(n)]
            created.extend(procs)
            await asyncio.gather(*(p.start() for p in procs))
            return procs
        servers = [BackendServer(**kwargs) for _ in range(n)]
        created.extend(servers)
        for server in servers:
            await server.start()
        return servers

    try:
        yield cast("BackendsFactory", factory)
    finally:
        await _stop_all(b.stop for b in reversed(created))


@contextlib.asynccontextmanager
async def fault_proxy_factory() -> AsyncIterator[FaultProxyFactory]:
    """Async context manager behind ``wsclient_fault_proxy``, usable without pytest.

    ``async with fault_proxy_factory() as make: proxy = await make(backend)`` - every
    proxy started through ``make`` is stopped when the block exits.
    """
    from wsclient.testing import FaultProxy

    created: list[FaultProxy] = []

    async def factory(
        target: BackendServer | BackendProcess | tuple[str, int], **kwargs: Any
    ) -> FaultProxy:
        if isinstance(target, tuple):
            host, port = target
        else:
            host, port = target.host, target.port
            if port == 0:
                raise RuntimeError(f"{target!r} must be started before proxying to it")
        proxy = FaultProxy(host, port, **kwargs)
        created.append(proxy)
        await proxy.start()
        return proxy

    try:
        yield factory
    finally:
        await _stop_all(p.stop for p in reversed(created))


@contextlib.asynccontextmanager
async def interop_server_factory() -> AsyncIterator[InteropServerFactory]:
    """Async context manager behind ``wsclient_interop_server``, usable without pytest.

    ``async with interop_server_factory() as make: server = await make("uvicorn")`` -
    every child started through ``make`` is killed and reaped when the block exits (a
    test that wants the graceful path calls ``terminate()`` itself).
    """
    from wsclient.testing.interop import InteropServer

    created: list[InteropServer] = []

    async def factory(kind: InteropKind = "websockets", **kwargs: Any) -> InteropServer:
        server = InteropServer(kind, **kwargs)
        created.append(server)
        await server.start()
        return server

    try:
        yield factory
    finally:
        await _stop_all(s.close for s in reversed(created))


try:
    import pytest
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures need pytest and pytest-asyncio
    _HAVE_PYTEST_ASYNCIO = False
else:
    _HAVE_PYTEST_ASYNCIO = True


if _HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def wsclient_backend() -> AsyncIterator[BackendServer]:
        """A started in-process :class:`~wsclient.testing.BackendServer`, stopped after the test."""
        from wsclient.testing import BackendServer

        async with BackendServer() as server:
            yield server

    @pytest_asyncio.fixture
    async def wsclient_backends() -> AsyncIterator[BackendsFactory]:
        """Async factory ``await wsclient_backends(n, process=False, **kwargs)`` returning
        ``n`` started backends; every one of them is stopped after the test."""
        async with backends_factory() as factory:
            yield factory

    @pytest_asyncio.fixture
    async def wsclient_fault_proxy() -> AsyncIterator[FaultProxyFactory]:
        """Async factory ``await wsclient_fault_proxy(backend_or_host_port, **kwargs)``
        returning a started :class:`~wsclient.testing.FaultProxy`; all are stopped after
        the test."""
        async with fault_proxy_factory() as factory:
            yield factory

    @pytest_asyncio.fixture
    async def wsclient_interop_server() -> AsyncIterator[InteropServerFactory]:
        """Async factory ``await wsclient_interop_server(kind="websockets", **kwargs)``
        returning a started :class:`~wsclient.testing.interop.InteropServer`; every child
        is killed and reaped after the test."""
        async with interop_server_factory() as factory:
            yield factory

    @pytest.fixture(params=["websockets", "uvicorn", "aiohttp"])
    def wsclient_interop_kind(request: pytest.FixtureRequest) -> InteropKind:
        """Each :data:`~wsclient.testing.interop.InteropKind` in turn (a parametrised
        fixture: the requesting test runs once per kind)."""
        return cast("InteropKind", request.param)
