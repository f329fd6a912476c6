"""``wsclient probe URL``: one connection, as wsclient opens it, measured.

Handshake time (TCP, TLS and the upgrade, through ``wsclient.connect``), then
``--count`` ping/pong round trips, one after the other; reports their p50 and
p99, the negotiated subprotocol and compression, and for ``wss://`` the TLS
version, cipher, ALPN and the peer certificate's subject, issuer and expiry.
"""

from __future__ import annotations

import math
import ssl
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from wsclient.config import redact_url
from wsclient.connection import Connection, connect
from wsclient.transports.aiohttp import AiohttpTransport


class TlsInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str | None
    cipher: str | None
    bits: int | None
    alpn: str | None
    subject: str | None
    issuer: str | None
    not_after: str | None


class ProbeReport(BaseModel):
    """What ``wsclient probe --json`` prints."""

    model_config = ConfigDict(frozen=True)

    url: str
    remote_address: str | None
    handshake_ms: float
    pings: int
    lost_pings: int
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    rtt_max_ms: float | None
    subprotocol: str | None
    compression: str | None
    tls: TlsInfo | None


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 3)


def _name(parts: Any) -> str | None:
    # getpeercert(): ((("commonName", "x"),), (("organizationName", "y"),))
    if not parts:
        return None
    return ", ".join(f"{k}={v}" for rdn in parts for k, v in rdn)


def _tls_info(conn: Connection) -> TlsInfo | None:
    ssl_object = conn._checked().transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    cipher = ssl_object.cipher()
    cert = ssl_object.getpeercert() or {}
    return TlsInfo(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        alpn=ssl_object.selected_alpn_protocol(),
        subject=_name(cert.get("subject")),
        issuer=_name(cert.get("issuer")),
        not_after=str(cert["notAfter"]) if "notAfter" in cert else None,
    )


async def run_probe(url: str, count: int, timeout: float, options: dict[str, Any]) -> ProbeReport:
    """Connect, ping ``count`` times, close; raises ``ConnectError`` if it cannot connect."""
    started = time.perf_counter()
    conn = await connect(url, connect_timeout=timeout, **options)
    handshake_ms = (time.perf_counter() - started) * 1000
    try:
        link = conn._checked()
        rtts: list[float] = []
        for _ in range(count):
            sent = time.perf_counter()
            if await link.roundtrip(timeout=timeout):
                rtts.append((time.perf_counter() - sent) * 1000)
            elif not conn.connected:
                break
        transport = link.transport
        # aiohttp tells the negotiated window; picows never compresses.
        compress = transport.ws.compress if isinstance(transport, AiohttpTransport) else 0
        remote = conn.remote_address
        report = ProbeReport(
            url=redact_url(url),  # the report is printed: no token from the query string
            remote_address=f"{remote[0]}:{remote[1]}" if remote else None,
            handshake_ms=round(handshake_ms, 3),
            pings=count,
            lost_pings=count - len(rtts),
            rtt_p50_ms=_percentile(sorted(rtts), 0.50),
            rtt_p99_ms=_percentile(sorted(rtts), 0.99),
            rtt_max_ms=round(max(rtts), 3) if rtts else None,
            subprotocol=conn.protocol,
            compression=f"permessage-deflate (window {compress} bits)" if compress else None,
            tls=_tls_info(conn),
        )
    finally:
        await conn.close()
    return report


def report_lines(report: ProbeReport) -> list[str]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    lines = [
        f"probe {report.url} ({report.remote_address or 'address unknown'})",
        f"  handshake     {ms(report.handshake_ms)}",
        f"  ping rtt      p50 {ms(report.rtt_p50_ms)}  p99 {ms(report.rtt_p99_ms)}  "
        f"max {ms(report.rtt_max_ms)}  ({report.pings - report.lost_pings}/{report.pings} "
        "answered)",
        f"  subprotocol   {report.subprotocol or 'none'}",
        f"  compression   {report.compression or 'none'}",
    ]
    tls = report.tls
    if tls is None:
        lines.append("  tls           none (ws://)")
    else:
        lines += [
            f"  tls           {tls.version} {tls.cipher} ({tls.bits} bits), ALPN {tls.alpn or '-'}",
            f"  certificate   {tls.subject or '-'}; issuer {tls.issuer or '-'}; "
            f"expires {tls.not_after or '-'}",
        ]
    return lines
