"""The ``wsclient`` command (extra ``wsclient[cli]``, which brings ``rich``).

``wsclient demo [--duration S]``
    local backends, traffic, injected faults and a live table (``make demo``).
``wsclient status CONFIG [--json] [--watch] [--interval S] [--count N]``
    a pool from a TOML/JSON config file (and ``WSCLIENT_*`` variables), probed
    once, shown as a table or JSON.
``wsclient probe URL [--count N]``
    handshake time, ping RTT p50/p99, negotiated subprotocol and compression,
    TLS details.

Exit status: 0 done, 1 the peer failed (probe could not connect), 2 bad usage
or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsclient", description="Operate and try out wsclient WebSocket pools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="local backends, traffic, faults, a live table")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    demo.add_argument("--workers", type=int, default=8, help="concurrent clients (default 8)")

    status = sub.add_parser("status", help="start a pool from a config file and show it")
    status.add_argument("config", help="TOML or JSON file of PoolConfig options")
    status.add_argument("--json", action="store_true", help="print PoolStats/BackendHealth")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, help="refresh period (s)")
    status.add_argument("--count", type=int, default=None, help="stop after N refreshes")

    probe = sub.add_parser("probe", help="measure one WebSocket endpoint")
    probe.add_argument("url", help="ws:// or wss:// URL")
    probe.add_argument("--count", type=int, default=10, help="pings (default 10)")
    probe.add_argument("--timeout", type=float, default=5.0, help="per step (default 5 s)")
    probe.add_argument(
        "--protocol", action="append", default=[], help="offer a subprotocol (repeatable)"
    )
    probe.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    probe.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="extra header"
    )
    probe.add_argument("--cafile", help="trust this CA bundle (wss://)")
    probe.add_argument("--insecure", action="store_true", help="do not verify certificates")
    probe.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        parser.error(f"{name} must be > 0, got {value}")


def _probe_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            parser.error(f"--header takes NAME:VALUE, got {header!r}")
        headers[name.strip()] = value.strip()
    options: dict[str, Any] = {
        "protocols": tuple(args.protocol),
        "compression": args.compression,
        "headers": headers,
    }
    if args.insecure:
        options["ssl"] = False
    elif args.cafile:
        options["ssl"] = ssl.create_default_context(cafile=args.cafile)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - depends on the environment
        print("wsclient: this command needs rich: pip install 'wsclient[cli]'", file=sys.stderr)
        return 2
    console = Console()
    try:
        if args.command == "demo":
            _positive(parser, "--duration", args.duration)
            from wsclient.cli.demo import run_demo

            return asyncio.run(run_demo(console, args.duration, args.workers))
        if args.command == "status":
            _positive(parser, "--interval", args.interval)
            _positive(parser, "--count", args.count)
            return _status(console, args)
        _positive(parser, "--count", args.count)
        _positive(parser, "--timeout", args.timeout)
        return _probe(console, args, _probe_options(parser, args))
    except KeyboardInterrupt:
        return 130


def _status(console: Any, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from wsclient.cli.status import run_status

    try:
        return asyncio.run(
            run_status(
                console,
                args.config,
                as_json=args.json,
                watch=args.watch,
                interval=args.interval,
                count=args.count,
            )
        )
    except (ValidationError, ValueError, OSError) as exc:
        print(f"wsclient status: {args.config}: {exc}", file=sys.stderr)
        return 2


def _probe(console: Any, args: argparse.Namespace, options: dict[str, Any]) -> int:
    from pydantic import ValidationError

    from wsclient.cli.probe import report_lines, run_probe
    from wsclient.config import redact_url
    from wsclient.errors import ConnectError

    try:
        report = asyncio.run(run_probe(args.url, args.count, args.timeout, options))
    except (ValidationError, ValueError) as exc:
        print(f"wsclient probe: {exc}", file=sys.stderr)
        return 2
    except (ConnectError, TimeoutError) as exc:
        print(f"wsclient probe: {redact_url(args.url)}: {exc or 'timed out'}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.model_dump(mode="json")))
    else:
        for line in report_lines(report):
            console.print(line, highlight=False)
    return 0
