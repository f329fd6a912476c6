"""Operating a pool: structured logs, a Prometheus /metrics endpoint, pool.stats().

Run it (``python examples/operating.py``): two local backends, a pool, the
endpoint on a free loopback port, one scrape of it and the stats snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request

from prometheus_client import CollectorRegistry, start_http_server

from wsclient import Backend, WebSocketPool
from wsclient.metrics import PrometheusCollector
from wsclient.testing import BackendServer


class FieldsFormatter(logging.Formatter):
    """Appends wsclient's structured fields (``extra=``) to each line."""

    FIELDS = ("backend_id", "connection_id", "code", "reason")

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{name}={record.__dict__[name]!r}" for name in self.FIELDS if name in record.__dict__
        )
        return f"{super().format(record)} {fields}".rstrip()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # the endpoint's own thread
        return str(response.read().decode())


async def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("wsclient").addHandler(handler)
    logging.getLogger("wsclient").setLevel(logging.INFO)

    registry = CollectorRegistry()  # or prometheus_client.REGISTRY
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        async with (
            BackendServer() as a,
            BackendServer() as b,
            WebSocketPool(
                backends=[Backend(id="a", url=a.url, weight=2), Backend(id="b", url=b.url)],
                min_connections=3,
            ) as pool,
        ):
            registry.register(PrometheusCollector(pool, pool_name="orders"))
            for i in range(30):
                async with pool.acquire() as conn:
                    await conn.send_json({"i": i})
                    await conn.receive_json(timeout=5)
            text = await asyncio.to_thread(scrape, url)
            for line in text.splitlines():
                if line.startswith(("wsclient_connections{", "wsclient_acquires_total")):
                    print(line)
            stats = pool.stats()
            print(f"acquires: {stats.acquires.total}, shares:", end="")
            print("".join(f" {bid}={b.share:.0%}" for bid, b in stats.backends.items()))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        logging.getLogger("wsclient").removeHandler(handler)


if __name__ == "__main__":
    asyncio.run(main())
