"""``DnsResolver``: one backend per address a DNS name resolves to (A/AAAA, or SRV).

``DnsResolver("wss://orders.internal:8443/ws")`` asks for the A and AAAA
records of ``orders.internal`` and yields one ``Backend`` per address:

* id ``orders.internal@10.0.0.7:8443``, the same on every re-resolution, so
  an address that stays keeps its connections and its health;
* url ``wss://10.0.0.7:8443/ws`` (the address is what is dialled) with
  ``server_hostname="orders.internal"``: TLS sends that name (SNI) and checks
  the certificate against it, and the ``Host`` header carries it, as if the
  name had been dialled.

``srv=True`` asks for SRV records of the URL's host (``_ws._tcp.orders.internal``):
only the lowest priority is used, each target's addresses become backends on
the record's port with the record's weight (0 counts as 1), and the name for
TLS and ``Host`` is the host without its leading ``_service._proto`` labels.

Re-resolved after the answer's TTL, clamped to ``[min_ttl, max_ttl]``, or
every ``interval`` seconds if one is given. ``nameservers=["127.0.0.1:5353"]``
replaces the system's resolvers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
from yarl import URL

from wsclient.config import Backend, _validate_ws_url
from wsclient.resolvers.base import Resolution, ResolverError, check_seconds

__all__ = ["DnsResolver"]

_NO_RECORDS = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


class DnsResolver:
    """Resolve ``url``'s host into backends; ``**backend_options`` (headers, auth, ssl, …)
    apply to every backend it yields."""

    def __init__(
        self,
        url: str,
        srv: bool = False,
        interval: float | None = None,
        nameservers: list[str] | None = None,
        *,
        min_ttl: float = 5.0,
        max_ttl: float = 300.0,
        timeout: float = 2.0,
        retry_delay: float = 1.0,
        empty_grace: float = 30.0,
        **backend_options: Any,
    ) -> None:
        try:
            _validate_ws_url(url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        check_seconds("interval", interval, allow_none=True)
        for name, value in (
            ("min_ttl", min_ttl),
            ("max_ttl", max_ttl),
            ("timeout", timeout),
            ("retry_delay", retry_delay),
        ):
            check_seconds(name, value)
        if min_ttl > max_ttl:
            raise ValueError(f"min_ttl ({min_ttl}) > max_ttl ({max_ttl})")
        if not (isinstance(empty_grace, int | float) and empty_grace >= 0):
            raise ValueError(f"empty_grace must be a number of seconds >= 0, got {empty_grace!r}")
        for reserved in ("id", "url", "server_hostname"):
            if reserved in backend_options:
                raise ValueError(f"DnsResolver sets {reserved!r} of each backend itself")
        parsed = URL(url)
        self.url = url
        self.srv = srv
        self.interval = interval
        self.min_ttl = float(min_ttl)
        self.max_ttl = float(max_ttl)
        self.timeout = float(timeout)
        self.retry_delay = float(retry_delay)
        self.empty_grace = float(empty_grace)
        self._url = parsed
        self._host = (parsed.host or "").rstrip(".")
        self._tls_name = _strip_service_labels(self._host) if srv else self._host
        self._port = parsed.port  # the scheme's default when absent
        Backend.model_validate({"url": url, **backend_options})  # bad options fail here
        self._options = backend_options
        self._resolver = _make_resolver(nameservers, timeout)

    def describe(self) -> str:
        return f"dns {'SRV' if self.srv else 'A/AAAA'} {self._host}"

    def __repr__(self) -> str:
        return f"<DnsResolver {self.describe()}>"

    async def resolve(self) -> Resolution:
        if _is_ip(self._host):
            backends = [self._backend(self._host, self._host, self._port, 1)]
            return Resolution(backends, math.inf)
        if self.srv:
            backends, ttl = await self._resolve_srv()
        else:
            addresses, ttl = await self._addresses(self._host)
            backends = [self._backend(self._host, ip, self._port, 1) for ip in addresses]
        if self.interval is not None:
            next_in = self.interval
        else:
            next_in = min(self.max_ttl, max(self.min_ttl, ttl if ttl is not None else self.min_ttl))
        return Resolution(backends, next_in)

    def _backend(self, name: str, ip: str, port: int | None, weight: int) -> Backend:
        host = f"[{ip}]" if ":" in ip else ip
        url = self._url.with_host(ip).with_port(port)
        return Backend(
            id=f"{name}@{host}:{port}",
            url=str(url),
            weight=weight,
            server_hostname=None if _is_ip(self._tls_name) else self._tls_name,
            **self._options,
        )

    async def _query(self, name: str, rdtype: str) -> tuple[list[Any], float | None]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except _NO_RECORDS:
            return [], None
        except dns.resolver.NoNameservers as exc:
            raise ResolverError(f"{rdtype} {name}: no nameserver answered ({exc})") from None
        except dns.exception.Timeout:
            raise ResolverError(f"{rdtype} {name}: no answer within {self.timeout} s") from None
        except dns.exception.DNSException as exc:
            raise ResolverError(f"{rdtype} {name}: {type(exc).__name__}: {exc}") from None
        ttl = answer.rrset.ttl if answer.rrset is not None else None
        return list(answer), ttl

    async def _addresses(self, name: str) -> tuple[list[str], float | None]:
        (a, ttl_a), (aaaa, ttl_aaaa) = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA")
        )
        addresses = sorted({r.address for r in a}) + sorted({r.address for r in aaaa})
        ttls = [t for t in (ttl_a, ttl_aaaa) if t is not None]
        return addresses, min(ttls) if ttls else None

    async def _resolve_srv(self) -> tuple[list[Backend], float | None]:
        records, ttl = await self._query(self._host, "SRV")
        if not records:
            return [], ttl
        best = min(r.priority for r in records)
        chosen = [r for r in records if r.priority == best]
        targets = [r.target.to_text(omit_final_dot=True) for r in chosen]
        resolved = await asyncio.gather(*(self._addresses(t) for t in set(targets)))
        by_target = dict(zip(set(targets), resolved, strict=True))
        backends: dict[str, Backend] = {}
        ttls = [t for t in [ttl, *(r[1] for r in resolved)] if t is not None]
        for record, target in zip(chosen, targets, strict=True):
            weight = min(10_000, max(1, int(record.weight)))
            for ip in by_target[target][0]:
                backend = self._backend(target, ip, int(record.port), weight)
                backends.setdefault(backend.id, backend)
        return list(backends.values()), min(ttls) if ttls else None


def _make_resolver(nameservers: list[str] | None, timeout: float) -> dns.asyncresolver.Resolver:
    if nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            raise ValueError(
                "no system DNS configuration (/etc/resolv.conf); pass nameservers=[...]"
            ) from None
    else:
        if isinstance(nameservers, str) or not nameservers:
            raise ValueError("nameservers must be a non-empty list like ['127.0.0.1:5353']")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [_nameserver(item) for item in nameservers]
    resolver.cache = None  # the TTL schedule is ours; a cache would hide changes
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def _nameserver(item: str) -> dns.nameserver.Nameserver:
    """``"10.0.0.2"``, ``"10.0.0.2:5353"``, ``"[::1]:5353"`` or ``"::1"``."""
    host, port = item, 53
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest.startswith(":"):
            port = _port(item, rest[1:])
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
        port = _port(item, port_text)
    if not _is_ip(host):
        raise ValueError(f"nameserver {item!r}: expected an IP address, optionally with :port")
    return dns.nameserver.Do53Nameserver(host, port)


def _port(item: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"nameserver {item!r}: bad port {text!r}")
    return int(text)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _strip_service_labels(host: str) -> str:
    labels = host.split(".")
    while len(labels) > 1 and labels[0].startswith("_"):
        labels.pop(0)
    return ".".join(labels)
