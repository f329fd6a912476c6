"""Real servers for the fleet tests: ``redis-server`` and a DNS server, each a child process.

``RedisServer`` installs the Debian ``redis-server`` package when it is
missing (the tests need the real server), runs it on a free loopback port
with no persistence, and stops it by PID. ``DnsServer`` runs dnslib's server
(``dns_main.py``) on a free loopback UDP port; it answers from a JSON zone
file that the test rewrites to change the records, and SIGSTOP makes it
stop answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_INSTALL_LOCK = Path(tempfile.gettempdir()) / "wsclient-redis-install.lock"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """Path of ``redis-server``; installs the Debian package if it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    import fcntl

    with open(_INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time (xdist, parallel runs)
        found = shutil.which("redis-server")
        if found:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "redis-server"],
        ):
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is still missing after apt-get install redis-server")
    return found


class _Pausable:
    """SIGSTOP/SIGCONT for a child server: it keeps its sockets and answers nothing."""

    proc: Any

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


class RedisServer(_Pausable):
    """A real ``redis-server`` on 127.0.0.1:<free port>; ``kill()``/``pause()``/``restart()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="wsclient-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = redis_server_binary()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused one too
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


class DnsServer(_Pausable):
    """dnslib's DNS server on 127.0.0.1:<free UDP port>, answering from a zone the test sets."""

    def __init__(self) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        handle, name = tempfile.mkstemp(prefix="wsclient-zone-", suffix=".json")
        os.close(handle)
        self.zone = Path(name)
        self.set_records([])
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_records(self, records: list[dict[str, Any]]) -> None:
        """Replace every record (atomically: the server never reads half a file)."""
        tmp = self.zone.with_suffix(".tmp")
        tmp.write_text(json.dumps(records))
        os.replace(tmp, self.zone)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("dns_main.py")),
            str(self.port),
            str(self.zone),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(15):
            line = await self.proc.stdout.readline()
        if not line.startswith(b"READY"):
            raise RuntimeError(f"DNS server did not start: {line!r}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            await self.proc.wait()
        self.zone.unlink(missing_ok=True)


def run_example(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` as a user would (a child process, bounded)."""
    root = Path(__file__).resolve().parent.parent.parent
    return subprocess.run(
        [sys.executable, str(root / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
        env={**os.environ, **(env or {})},
    )
