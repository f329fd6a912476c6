"""The `wsclient` command, run as users run it: the installed console script in a child
process (demo under a pseudo-terminal), against real local servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from wsclient.backend import BackendHealth
from wsclient.cli import main
from wsclient.cli.probe import ProbeReport
from wsclient.stats import PoolStats
from wsclient.testing import BackendServer

WSCLIENT = Path(sys.executable).parent / "wsclient"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture(autouse=True)
def installed() -> None:
    assert WSCLIENT.exists(), f"{WSCLIENT} missing: `make install` installs the console script"


async def run(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(WSCLIENT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_demo_under_a_pseudo_terminal_redraws_one_table_in_place() -> None:
    """`wsclient demo` on a terminal: many frames drawn over each other (cursor moves
    and line erases, no scrolling copies), errors shown with their age while a backend
    is down, none left on a recovered row, then one summary with the SIGKILL in it."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "CI", "COLUMNS")}
    proc = await asyncio.create_subprocess_exec(
        str(WSCLIENT),
        "demo",
        "--duration",
        "3",
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"},
    )
    os.close(terminal)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    ended = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if data:
            chunks.append(data)
        elif not ended.done():
            ended.set_result(None)

    loop.add_reader(controller, readable)
    try:
        await asyncio.wait_for(ended, 40)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        loop.remove_reader(controller)
        os.close(controller)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    raw = b"".join(chunks).decode(errors="replace")
    frames = raw.count("wsclient demo")
    assert frames >= 5, raw[-2000:]  # ~12 at 4 a second; fewer on a loaded machine
    assert raw.count("\x1b[2K") >= frames and "\x1b[1A" in raw  # redrawn over itself
    text = ANSI.sub("", raw)
    # a current error with its age (the text may wrap inside its column)
    assert re.search(r"\(\d+s\s+ago\)", text), "no error with its age while ws-2 was down"
    final = text[text.rindex("wsclient demo") : text.index("summary:")]
    rows = [line.split() for line in final.splitlines() if line.strip().startswith("ws-")]
    assert len(rows) == 3, final
    for row in rows:
        if row[2:5] == ["healthy", "closed", "no"]:
            assert row[-1] == "-", f"stale error on a recovered backend: {row}"
    summary = text[text.index("summary:") :]
    assert text.count("summary:") == 1
    assert "fault: SIGKILL ws-2" in summary and re.search(r"ws-2: .*lost [1-9]", summary)


@pytest.fixture
async def backends() -> AsyncIterator[list[BackendServer]]:
    servers = [BackendServer(name=f"s{i}") for i in range(2)]
    await asyncio.gather(*(s.start() for s in servers))
    yield servers
    await asyncio.gather(*(s.stop() for s in servers))


def write_config(tmp_path: Path, servers: list[BackendServer]) -> Path:
    path = tmp_path / "pool.toml"
    tables = "".join(
        f'[[backends]]\nid = "b{i}"\nurl = "{s.url}"\nweight = {i + 1}\n\n'
        for i, s in enumerate(servers)
    )
    path.write_text(
        "min_connections = 3\nmax_connections = 6\n\n"
        '[health_check]\ninterval = 60\ntimeout = 2\npath = "/health"\n\n' + tables
    )
    return path


async def test_status_json_validates_against_the_schemas(
    backends: list[BackendServer], tmp_path: Path
) -> None:
    """`wsclient status CONFIG --json`: a PoolStats and a BackendHealth per backend, the
    warm set open and every backend probed once; --watch --count prints one per line."""
    config = write_config(tmp_path, backends)
    code, out, err = await run("status", str(config), "--json")
    assert code == 0, err
    data = json.loads(out)
    stats = PoolStats.model_validate(data["stats"])
    health = {bid: BackendHealth.model_validate(h) for bid, h in data["health"].items()}
    assert set(health) == set(stats.backends) == {"b0", "b1"}
    assert stats.size == 3 and stats.max_connections == 6 and stats.state == "running"
    assert all(h.healthy and h.last_check is not None and h.latency for h in health.values())
    assert [health[b].weight for b in ("b0", "b1")] == [1, 2]

    code, out, err = await run("status", str(config), "--json", "--watch", "--count", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        PoolStats.model_validate(json.loads(line)["stats"])


async def test_status_table(backends: list[BackendServer], tmp_path: Path) -> None:
    """Without --json: a table of the backends; --watch redraws it (--count ends it)."""
    config = write_config(tmp_path, backends)
    code, out, err = await run("status", str(config))
    assert code == 0, err
    assert re.search(r"b0 +1 +healthy +closed +no", out) and "b1" in out, out
    code, out, err = await run("status", str(config), "--watch", "--count=2", "--interval=0.2")
    assert code == 0, err
    assert re.search(r"b1 +2 +healthy +closed +no", out), out


def test_bad_input_exits_2_naming_what_was_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (the console script's main()): a misspelt option, a missing file, a
    non-WebSocket URL and a non-positive count each exit 2 with the culprit named."""
    config = tmp_path / "pool.toml"
    config.write_text("max_conections = 5\n")
    assert main(["status", str(config)]) == 2
    assert "max_conections" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert main(["probe", "http://127.0.0.1/ws"]) == 2
    assert "url" in capsys.readouterr().err.lower()
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "ws://127.0.0.1/ws", "--count", "0"])
    assert exit_info.value.code == 2 and "--count must be > 0" in capsys.readouterr().err


def test_probe_unreachable_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A refused port: exit 1, saying so."""
    assert main(["probe", "ws://127.0.0.1:9/ws?key=s3cret", "--count=1", "--timeout=2"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err.lower() and "s3cret" not in err


@contextlib.asynccontextmanager
async def tls_server(ca: trustme.CA) -> AsyncIterator[int]:
    """A wss:// echo endpoint with a subprotocol and compression, certified by ``ca``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("chat.v1",), compress=True)
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield port
    finally:
        await runner.cleanup()


async def test_probe_reports_handshake_rtt_protocol_compression_and_tls(
    tmp_path: Path,
) -> None:
    """`wsclient probe wss://…`: handshake time, RTT p50/p99 over --count pings, the
    negotiated subprotocol and compression, TLS version/cipher and the certificate."""
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    async with tls_server(ca) as port:
        url = f"wss://localhost:{port}/ws"
        args = ["probe", url, "--count", "5", "--cafile", str(cafile), "--protocol", "chat.v1"]
        code, out, err = await run(*args, "--compression", "--json")
        assert code == 0, err
        report = ProbeReport.model_validate(json.loads(out))
        assert (report.pings, report.lost_pings) == (5, 0)
        assert report.rtt_p50_ms is not None and report.rtt_p99_ms is not None
        assert 0 < report.rtt_p50_ms <= report.rtt_p99_ms <= (report.rtt_max_ms or 0)
        assert report.handshake_ms > 0 and report.subprotocol == "chat.v1"
        assert report.compression is not None and "permessage-deflate" in report.compression
        assert report.tls is not None and report.tls.version in ("TLSv1.2", "TLSv1.3")
        assert "trustme" in (report.tls.issuer or ""), report.tls
        assert report.tls.not_after

        code, out, err = await run(*args)
        assert code == 0, err
        for words in ("handshake", "p50", "p99", "chat.v1", "compression   none", "TLSv1."):
            assert words in out, out
        code, out, err = await run("probe", url, "--count", "1")  # the CA is not trusted
        assert code == 1 and "certificate" in err.lower(), err


async def test_probe_plain_ws(backends: list[BackendServer]) -> None:
    """A ws:// backend: no TLS, no subprotocol, no compression offered; a token in the
    URL's query string is not printed."""
    code, out, err = await run("probe", backends[0].url + "?token=s3cret", "--count=3", "--json")
    assert code == 0, err
    assert "s3cret" not in out + err  # the URL is shown with its query values masked
    report = ProbeReport.model_validate(json.loads(out))
    assert report.tls is None and report.subprotocol is None and report.compression is None
    assert report.remote_address is not None and report.remote_address.startswith("127.0.0.1")


def test_error_clock_shows_current_errors_with_age_and_clears_on_recovery() -> None:
    """The live view's rule: an error shows with its age while the backend is not back
    to normal (a failed probe under the threshold counts), a repeat keeps its start, a
    fresh failure restarts it, and recovery clears it though last_error stays."""
    from wsclient.cli.view import ErrorClock

    def health(**changes: object) -> dict[str, BackendHealth]:
        fields: dict[str, object] = {
            "id": "b",
            "url": "ws://b/ws",
            "healthy": True,
            "eligible": True,
            "latency": 1.0,
            "last_check": 0.0,
            "breaker": "closed",
            "active": 0,
            "idle": 1,
            "connecting": 0,
            "consecutive_failures": 0,
            "weight": 1,
            "effective_weight": 1.0,
            "last_error": None,
            "retry_in": 0.0,
            "ejected": False,
        }
        fields.update(changes)
        return {"b": BackendHealth.model_validate(fields)}

    clock = ErrorClock()
    clock.update(health(), now=0.0)
    assert clock.describe("b", now=1.0) == "-"
    clock.update(health(consecutive_failures=1, last_error="refused"), now=10.0)
    clock.update(health(consecutive_failures=2, last_error="refused"), now=12.0)
    assert clock.describe("b", now=15.0) == "refused (5s ago)"
    clock.failed("b", "refused", now=14.0)  # an event: a new failure, same words
    assert clock.describe("b", now=15.0) == "refused (1s ago)"
    clock.update(health(last_error="refused"), now=20.0)  # recovered; history stays
    assert clock.describe("b", now=21.0) == "-"
