"""Close codes and connection states: a leaf module, so ``errors`` and
``connection`` both use them without importing each other."""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "ConnectionState", "check_close_code", "describe_close_code"]


class ConnectionState(enum.IntEnum):
    """Where a connection is in its life; transitions only move forward."""

    CONNECTING = 0
    OPEN = 1
    PEER_REQUESTED_CLOSE = 2
    ENDING = 3
    CLOSED = 4


class CloseCode(enum.IntEnum):
    """RFC 6455 close codes, each with ``.description``."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    RESERVED = 1004
    NO_STATUS_RECEIVED = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE_FAILED = 1015

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    CloseCode.NORMAL: "normal closure",
    CloseCode.GOING_AWAY: "going away (server shutting down or client leaving)",
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.UNSUPPORTED_DATA: "unsupported data type",
    CloseCode.RESERVED: "reserved",
    CloseCode.NO_STATUS_RECEIVED: "no status code received",
    CloseCode.ABNORMAL_CLOSURE: "abnormal closure (no close frame)",
    CloseCode.INVALID_PAYLOAD: "invalid payload data (e.g. bad UTF-8)",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.MANDATORY_EXTENSION: "mandatory extension missing",
    CloseCode.INTERNAL_ERROR: "internal server error",
    CloseCode.SERVICE_RESTART: "service restart",
    CloseCode.TRY_AGAIN_LATER: "try again later",
    CloseCode.BAD_GATEWAY: "bad gateway",
    CloseCode.TLS_HANDSHAKE_FAILED: "TLS handshake failed",
}


def describe_close_code(code: int) -> str:
    """A human description of any close code."""
    try:
        return CloseCode(code).description
    except ValueError:
        pass
    if 3000 <= code <= 3999:
        return "registered for libraries and frameworks"
    if 4000 <= code <= 4999:
        return "application-defined"
    return "unknown"


def check_close_code(code: int) -> None:
    """Raise ``ValueError`` if a client may not send ``code`` (RFC 6455 §7.4)."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"close code must be an int, got {type(code).__name__}")
    if code in (1004, 1005, 1006, 1015):
        raise ValueError(
            f"close code {code} ({describe_close_code(code)}) is reserved and may not be sent"
        )
    if code < 1000 or code >= 5000:
        raise ValueError(f"close code {code} is outside 1000-4999 and may not be sent")
    if 1016 <= code <= 2999:
        raise ValueError(f"close code {code} is reserved by RFC 6455 and may not be sent")
