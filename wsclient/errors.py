"""Every error wsclient raises, in one hierarchy.

::

    WSClientError
     ├── PoolClosedError          (RuntimeError)  acquire/add on a closed pool
     ├── PoolMisuseError          (RuntimeError)  the caller's mistake: double release,
     │    │                                        release to the wrong pool
     │    └── ConnectionReleasedError              a connection used after release
     ├── AcquireTimeoutError      (TimeoutError)  no connection within acquire_timeout
     ├── NoHealthyBackendError                    no backend eligible right now
     ├── ConnectError             (OSError)       could not open a WebSocket
     ├── ConnectionClosedError    (ConnectionError) the connection is closed (code, reason)
     └── MessageTooBigError       (ValueError)    a frame over max_message_size

Each error also inherits the built-in it resembles, so ``except TimeoutError`` or
``except OSError`` in application code keeps working. Messages say who is at
fault: the caller (misuse), the server (closed, refused), or the network.
"""

from __future__ import annotations

from collections.abc import Mapping

from wsclient.codes import describe_close_code
from wsclient.config import redact_text, redact_url


class WSClientError(Exception):
    """Base class of every wsclient error."""


class PoolClosedError(WSClientError, RuntimeError):
    """The pool is closing or closed; it hands out nothing more."""


class PoolMisuseError(WSClientError, RuntimeError):
    """The caller used the pool wrongly (double release, wrong pool, ...)."""


class ConnectionReleasedError(PoolMisuseError):
    """A pooled connection was used after it went back to the pool."""


class AcquireTimeoutError(WSClientError, TimeoutError):
    """No connection could be handed out within the acquire timeout."""


class NoHealthyBackendError(WSClientError):
    """No backend is eligible: every one is unhealthy, open-circuited or removed.

    ``backends`` maps each backend id to a short description of its state, so
    the message alone tells an operator what is wrong.
    """

    def __init__(self, backends: Mapping[str, str]) -> None:
        self.backends = dict(backends)
        if self.backends:
            detail = "; ".join(f"{bid}: {state}" for bid, state in self.backends.items())
        else:
            detail = "the pool has no backends"
        super().__init__(f"no healthy backend available ({detail})")


class ConnectError(WSClientError, OSError):
    """Opening a WebSocket failed: refused, timed out, bad handshake, TLS error.

    ``url`` is the URL as it may be shown (query values, fragment and userinfo
    masked by :func:`wsclient.config.redact_url`), and so is any URL quoted in
    ``reason``: the error can be logged as it is. ``status`` is the HTTP status
    of a rejected or redirected handshake.
    """

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        self.url = redact_url(url)
        self.reason = redact_text(reason)
        self.status = status
        super().__init__(f"could not connect to {self.url}: {self.reason}")

    def __str__(self) -> str:
        # OSError's own __str__ would print the args tuple.
        return f"could not connect to {self.url}: {self.reason}"


class ConnectionClosedError(WSClientError, ConnectionError):
    """The connection is closed; ``code`` and ``reason`` say how it ended."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(code, reason)

    def __str__(self) -> str:
        if self.code is None:
            return "connection closed"
        text = f"connection closed with {self.code} ({describe_close_code(self.code)})"
        return f"{text}: {self.reason}" if self.reason else text


class MessageTooBigError(WSClientError, ValueError):
    """A message exceeded ``max_message_size`` (sent or received)."""

    def __init__(self, size: int | None, limit: int) -> None:
        self.size = size
        self.limit = limit
        got = f"{size} bytes" if size is not None else "a message"
        super().__init__(f"{got} exceeds max_message_size={limit}")
