"""An HAProxy hop for ``client_bound.py``: installed if missing, bound to 127.0.0.1, one PID.

``ensure_haproxy()`` finds the binary or, as root, installs Debian's package
(``apt-get update`` first, then ``apt-get install -y haproxy``); it returns the path or
the reason it cannot. ``HAProxy(ports)`` writes a config to a temporary directory and runs
``haproxy -db`` (foreground, no daemon) as our own child: one process, one thread
(``nbthread 1``, so it competes with the backends for the second core like any single
proxy process would), HTTP mode so the WebSocket upgrade is parsed and then tunnelled,
round-robin over the backends. ``stop()`` sends SIGTERM to that PID and reaps it (the
caller registers it, e.g. ``stack.callback(proxy.stop)``, right after ``start()``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from _servers import stop_process


def ensure_haproxy() -> tuple[str | None, str]:
    """(path to haproxy, "") or (None, why it is not available)."""
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )
    if path is not None:
        return path, ""
    if os.geteuid() != 0:
        return None, "haproxy not installed and not root (apt-get install haproxy)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "haproxy"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return None, f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}"
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return (path, "") if os.access(path, os.X_OK) else (None, "haproxy missing after install")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


CONFIG = """\
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend ws
    bind {host}:{port}
    default_backend echo
backend echo
    balance roundrobin
{servers}
"""


class HAProxy:
    """``haproxy`` in front of the given backend ports; ``url`` once started."""

    def __init__(self, binary: str, ports: list[int], *, host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.ports = ports
        self.host = host
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def start(self, timeout: float = 10.0) -> HAProxy:
        self._dir = tempfile.TemporaryDirectory(prefix="wsclient-haproxy-")
        self.port = _free_port(self.host)
        servers = "\n".join(f"    server s{i} {self.host}:{p}" for i, p in enumerate(self.ports))
        cfg = Path(self._dir.name) / "haproxy.cfg"
        cfg.write_text(CONFIG.format(host=self.host, port=self.port, servers=servers))
        check = subprocess.run([self.binary, "-c", "-f", str(cfg)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config rejected: {check.stderr.decode()[-500:]}")
        self._proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                self.stop()
                raise RuntimeError(f"haproxy exited with {self._proc.returncode}: {err[-500:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"haproxy not listening after {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to our PID, SIGKILL after ``timeout``; reaps it. Idempotent."""
        proc = self._proc
        if proc is not None:
            stop_process(proc, timeout)
            if proc.stderr is not None:
                proc.stderr.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
