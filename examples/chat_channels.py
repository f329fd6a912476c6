"""A chat client with channels: a gateway keeps one connection per user to a chat backend
(the `websockets` library's server, started here in a child process) and fans messages out
per channel with ``wsclient.Broadcaster``.

The backend echoes what it gets, so each user's connection reading the message back is
the proof that the broadcast reached it. Run: ``.venv/bin/python examples/chat_channels.py``.
"""

from __future__ import annotations

import asyncio

from wsclient import Broadcaster, Connection, connect
from wsclient.testing.interop import InteropServer

USERS = ("ann", "bob", "cid", "dee")


async def main() -> None:
    async with InteropServer("websockets") as server:
        users: dict[str, Connection] = {name: await connect(server.url) for name in USERS}
        chat = Broadcaster(timeout=2.0)
        chat.create_channel("general")
        chat.create_channel("random")
        for name, conn in users.items():
            chat.subscribe(conn, "general")
            chat.add(conn, "users", name)  # a namespace: per-user sends by id
        chat.subscribe(users["ann"], "random")
        chat.subscribe(users["bob"], "random")

        # ann posts to #general: everyone but ann gets it.
        results = await chat.broadcast(
            "general", {"from": "ann", "text": "hello all"}, exclude=users["ann"]
        )
        print("general:", sorted(_name(users, c) for c, err in results.items() if err is None))
        for name in USERS[1:]:
            print(f"  {name} got", await users[name].receive_json(timeout=5))

        # #random only reaches its two subscribers.
        results = await chat.broadcast("random", {"from": "bob", "text": "anyone?"})
        print("random:", sorted(_name(users, c) for c in results))
        for name in ("ann", "bob"):
            await users[name].receive_json(timeout=5)

        # A direct message by id, then cid leaves: closed connections leave every channel.
        await chat.send("users", "dee", {"from": "ann", "text": "psst"})
        print("  dee got", await users["dee"].receive_json(timeout=5))
        await users["cid"].close()
        print(
            "general after cid left:", sorted(_name(users, c) for c in chat.subscribers("general"))
        )

        closed = await chat.close_all("users", 1000, "chat closed")
        print(f"closed {closed} connections")


def _name(users: dict[str, Connection], conn: object) -> str:
    return next(name for name, c in users.items() if c is conn)


if __name__ == "__main__":
    asyncio.run(main())
