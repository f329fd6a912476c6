"""A DNS server for the tests: dnslib's, answering from a JSON zone file re-read per query.

``python dns_main.py PORT ZONE.json``; prints ``READY`` once listening on
127.0.0.1:PORT (UDP). Each record: ``{"name", "type": A|AAAA|SRV, "ttl",
"value"}`` (A/AAAA) or ``{"name", "type": "SRV", "ttl", "priority", "weight",
"port", "target"}``. Names are matched without the final dot.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: str) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with open(self.zone) as f:
            records: list[dict[str, Any]] = json.load(f)
        names = {r["name"].rstrip(".").lower() for r in records}
        for r in records:
            if r["name"].rstrip(".").lower() != qname or r["type"] != qtype:
                continue
            ttl = int(r.get("ttl", 1))
            if qtype == "A":
                rdata: Any = A(r["value"])
            elif qtype == "AAAA":
                rdata = AAAA(r["value"])
            else:
                rdata = SRV(r["priority"], r["weight"], r["port"], r["target"])
            reply.add_answer(RR(request.q.qname, QTYPE.reverse[qtype], rdata=rdata, ttl=ttl))
        if qname not in names:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def main() -> None:
    port, zone = int(sys.argv[1]), sys.argv[2]
    server = DNSServer(ZoneResolver(zone), port=port, address="127.0.0.1", tcp=False)
    server.start_thread()
    print("READY", flush=True)
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set() and os.getppid() == parent:  # exits if the test process dies
        time.sleep(0.2)
    server.stop()


if __name__ == "__main__":
    main()
