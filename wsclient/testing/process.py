"""``BackendProcess``: the backend in a child process, to SIGKILL, SIGSTOP and SIGCONT."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import site
import sys
from pathlib import Path
from typing import Any

import aiohttp

from wsclient.testing._common import (
    _STAT_FIELDS,
    BackendStats,
    MalformedKind,
    _Endpoint,
    _name_counter,
    logger,
)


def _child_env() -> dict[str, str]:
    """Environment for the child, making sure it can import this package."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    with contextlib.suppress(Exception):
        site_dirs.add(str(Path(site.getusersitepackages()).resolve()))
    if package_parent not in site_dirs:
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = (
            package_parent if not existing else os.pathsep.join([package_parent, existing])
        )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class BackendProcess(_Endpoint):
    """The :class:`BackendServer` running in a child process, to ``SIGKILL``/``SIGSTOP`` it.

    The child is ``python -m wsclient.testing._backend_main``; it reports ``READY <port>`` on its
    standard output once listening, and :meth:`start` waits for that line.  Counters and
    faults go through a small HTTP API on the same port (``GET /_stats``, ``GET /_wait``,
    ``POST /_fault``), so those methods are coroutines and fail while the process is
    paused or dead.  The child also exits by itself if the parent dies.

    :meth:`refuse` is a ``SIGKILL`` (the port is not reserved meanwhile) and
    :meth:`restore` starts it again on the same port.  POSIX only.

    :param startup_timeout: how long :meth:`start` waits for the ``READY`` line.
    :param stop_timeout: how long :meth:`terminate` waits after ``SIGTERM`` before ``SIGKILL``.
    :param control_timeout: timeout of each remote-control HTTP request.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ws",
        name: str | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 3.0,
        control_timeout: float = 5.0,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        self._host = host
        self._port = port
        self._path = path
        self._name = name if name is not None else f"backend-{next(_name_counter)}"
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._control_timeout = control_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"<BackendProcess {self._name} {self._host}:{self._port} pid={self.pid}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the child and wait until it listens.  Reuses the previous port if any."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        await self._reap()
        cmd = [
            sys.executable,
            "-m",
            "wsclient.testing._backend_main",
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--path",
            self._path,
            "--name",
            self._name,
            "--exit-on-stdin-eof",
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_env(),
        )
        self._proc = proc
        self._paused = False
        try:
            async with asyncio.timeout(self._startup_timeout):
                self._port = await self._read_ready(proc)
        except BaseException:
            await self._signal_and_reap(signal.SIGKILL)
            raise

    @staticmethod
    async def _read_ready(proc: asyncio.subprocess.Process) -> int:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                raise RuntimeError(f"backend process exited with {code} before it was ready")
            parts = line.decode(errors="replace").split()
            if len(parts) == 2 and parts[0] == "READY":
                return int(parts[1])

    async def stop(self) -> None:
        """Terminate the child gracefully (see :meth:`terminate`).  Idempotent."""
        await self.terminate()

    async def terminate(self) -> None:
        """``SIGTERM`` (the child closes its WebSockets with 1001) and reap; ``SIGKILL``
        after ``stop_timeout``.  A paused child is resumed first."""
        if not self.running:
            await self._reap()
            return
        if self._paused:
            self.resume()
        self._send(signal.SIGTERM)
        proc = self._proc
        assert proc is not None
        try:
            async with asyncio.timeout(self._stop_timeout):
                await proc.wait()
        except TimeoutError:
            logger.warning("%r ignored SIGTERM; killing it", self)
        await self._signal_and_reap(signal.SIGKILL)

    async def kill(self) -> None:
        """``SIGKILL`` the child (a crash: no close frames) and reap it."""
        await self._signal_and_reap(signal.SIGKILL)

    def pause(self) -> None:
        """``SIGSTOP`` the child: TCP stays up but nothing is read, answered or ponged."""
        self._send(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """``SIGCONT`` a paused child."""
        self._send(signal.SIGCONT)
        self._paused = False

    async def restart(self, *, graceful: bool = True) -> None:
        """Stop the child (``SIGTERM``, or ``SIGKILL`` if not ``graceful``) and start a new
        one on the same port."""
        if graceful:
            await self.terminate()
        else:
            await self.kill()
        await self.start()

    async def refuse(self) -> None:
        """Make the backend refuse connections by killing it (the port is not reserved)."""
        await self.kill()

    async def restore(self) -> None:
        """Start the child again if it is not running (or resume it if paused), then clear
        every fault."""
        if not self.running:
            await self.start()
            return
        if self._paused:
            self.resume()
        await self.fault("restore")

    async def heal(self) -> None:
        """Alias of :meth:`restore`."""
        await self.restore()

    def _send(self, sig: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)

    async def _signal_and_reap(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        await self._reap()

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        self._paused = False

    # -- properties ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the current child, if one was started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child (negative signal number if killed by a signal)."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a child is alive (possibly paused)."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def paused(self) -> bool:
        """Whether the child is stopped by :meth:`pause`."""
        return self._paused

    # -- remote control ----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._control_timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.request(method, self.http_url + path, json=json, params=params) as resp,
        ):
            return resp.status, await resp.json()

    async def fault(self, kind: str, **params: Any) -> int | None:
        """Apply a fault in the child by name (see the ``/_fault`` API); return its result.

        Kinds: ``restore``, ``reset_counters``, ``health_status`` (``status``),
        ``health_delay`` / ``reply_delay`` (``seconds``), ``stall_handshake`` /
        ``stall_after_handshake`` / ``ignore_pings`` (``flag``), ``close_next`` (``code``,
        ``reason``, ``count``), ``close_all`` (``code``, ``reason``), ``drop_all`` (``rst``),
        ``push`` (``text`` or ``data_b64``), ``malformed`` (``malformed``, ``size``).
        """
        status, body = await self._request("POST", "/_fault", json={"kind": kind, **params})
        if status != 200:
            raise ValueError(f"fault {kind!r} rejected: {body.get('error', body)}")
        result = body.get("result")
        return None if result is None else int(result)

    async def stats(self) -> BackendStats:
        """Fetch the child's counters."""
        _, body = await self._request("GET", "/_stats")
        return BackendStats(**{k: int(body[k]) for k in _STAT_FIELDS})

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``n`` WebSockets are open in the child (long-polls the child)."""
        await self._wait("open_connections", n, "eq", timeout)

    async def wait_for_accepted(self, n: int, timeout: float = 5.0) -> None:
        """Wait until the child has completed at least ``n`` handshakes in total."""
        await self._wait("accepted_total", n, "ge", timeout)

    async def _wait(self, field: str, value: int, op: str, timeout: float) -> None:
        params = {"field": field, "value": str(value), "op": op, "timeout": str(timeout)}
        status, body = await self._request(
            "GET", "/_wait", params=params, timeout=timeout + self._control_timeout
        )
        if status == 504:
            raise TimeoutError(f"{self._name}: {field} did not reach {value} in {timeout}s: {body}")
        if status != 200:
            raise ValueError(f"wait rejected: {body}")

    async def set_health_status(self, status: int) -> None:
        """Make ``GET /health`` answer with HTTP ``status``."""
        await self.fault("health_status", status=status)

    async def set_health_delay(self, seconds: float) -> None:
        """Delay ``GET /health`` answers by ``seconds``."""
        await self.fault("health_delay", seconds=seconds)

    async def set_reply_delay(self, seconds: float) -> None:
        """Delay every echo by ``seconds``."""
        await self.fault("reply_delay", seconds=seconds)

    async def stall_handshake(self, flag: bool = True) -> None:
        """Never answer upgrade requests."""
        await self.fault("stall_handshake", flag=flag)

    async def stall_after_handshake(self, flag: bool = True) -> None:
        """Freeze every WebSocket: no reads, no pongs, no echoes."""
        await self.fault("stall_after_handshake", flag=flag)

    async def ignore_pings(self, flag: bool = True) -> None:
        """Stop answering WebSocket pings."""
        await self.fault("ignore_pings", flag=flag)

    async def close_next_connections_with(
        self, code: int = 1000, reason: str = "", count: int | None = None
    ) -> None:
        """Close new connections with ``code``/``reason`` right after the handshake."""
        await self.fault("close_next", code=code, reason=reason, count=count)

    async def close_all(self, code: int = 1000, reason: str = "") -> int:
        """Close every open WebSocket with ``code``/``reason``; return how many."""
        return await self.fault("close_all", code=code, reason=reason) or 0

    async def drop_all(self, *, rst: bool = True) -> int:
        """Abort every open WebSocket's TCP connection without a close frame."""
        return await self.fault("drop_all", rst=rst) or 0

    async def push(self, data: str | bytes) -> int:
        """Send an unsolicited message to every open WebSocket; return how many."""
        if isinstance(data, str):
            return await self.fault("push", text=data) or 0
        return await self.fault("push", data_b64=base64.b64encode(data).decode()) or 0

    async def send_malformed(self, kind: MalformedKind, *, size: int | None = None) -> int:
        """Write a malformed frame to every open WebSocket (see :func:`malformed_frame`)."""
        return await self.fault("malformed", malformed=kind, size=size) or 0

    async def reset_counters(self) -> None:
        """Zero the child's cumulative counters."""
        await self.fault("reset_counters")


# --------------------------------------------------------------------------------------
# FaultProxy
# --------------------------------------------------------------------------------------
