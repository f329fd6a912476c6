"""WebSocket implementations under ``Connection``, behind one ``Transport`` protocol.

``base`` holds the protocol and what both share (heartbeat, pong coalescing);
``aiohttp`` is the default; ``picows`` (extra ``wsclient[fast]``) is imported
only when ``transport="picows"`` is chosen.
"""

from wsclient.transports.base import LinkEvents, Message, MessageType, Transport

__all__ = ["LinkEvents", "Message", "MessageType", "Transport"]
