"""A notification consumer that survives a backend crash: ``pool.session()`` over two
`websockets` servers (child processes). The feed is numbered; ``on_connect`` subscribes
from the last number seen, so after a SIGKILL of the serving backend the session
reconnects to the other one, re-subscribes, and the consumer sees every notification
exactly once. Run: ``.venv/bin/python examples/notifications.py``.
"""

from __future__ import annotations

import asyncio
import json

from wsclient import Backend, Connection, Reconnected, WebSocketPool
from wsclient.testing.interop import InteropServer

TOTAL = 60


async def main() -> None:
    async with InteropServer("websockets") as east, InteropServer("websockets") as west:
        servers = {"east": east, "west": west}
        last_seen = -1

        async def subscribe(conn: Connection) -> None:
            # Runs on the first connection and again after every failover.
            start = last_seen + 1
            print(f"subscribing on {conn.backend_id} from #{start}")
            await conn.send_json(
                {"op": "count", "start": start, "n": TOTAL - start, "interval": 0.01}
            )

        async with (
            WebSocketPool(
                backends=[Backend(id=name, url=s.url) for name, s in servers.items()],
                min_connections=0,
                reconnect={"initial_delay": 0.05, "max_delay": 0.5},
            ) as pool,
            pool.session(on_connect=subscribe) as notifications,
        ):
            async for item in notifications:
                if isinstance(item, Reconnected):
                    print(f"reconnected: {item.previous_backend_id} -> {item.backend_id}")
                    continue
                seq = json.loads(item.data)["seq"]
                assert seq == last_seen + 1, f"expected #{last_seen + 1}, got #{seq}"
                last_seen = seq
                if seq == 20:
                    crashed = notifications.backend_id
                    assert crashed is not None
                    print(f"SIGKILL {crashed}")
                    await servers[crashed].kill()
                if seq == TOTAL - 1:
                    break
        print(f"received #0..#{last_seen}: {last_seen + 1} notifications, none twice, none lost")


if __name__ == "__main__":
    asyncio.run(main())
