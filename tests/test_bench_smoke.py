"""``benchmarks/pool_costs.py`` and ``benchmarks/client_bound.py`` end to end with tiny
sizes (their undocumented ``--smoke``).

The figures themselves are not judged here (a loaded machine moves them); the tests
check that each script runs against the current pool, stops what it started, and
writes every figure the README and ``run.py`` read, as a positive number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pool_costs.py"
STRATEGIES = ("round-robin", "weighted-round-robin", "least-connections", "ip-hash", "random")
OPS = ("set_weight", "add_backend", "remove_backend")


def _positive(obj: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = obj.get(key)
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)


def _flag(obj: dict[str, Any], key: str) -> None:
    assert isinstance(obj.get(key), bool), (key, obj.get(key))


def test_pool_costs_smoke(tmp_path: Path) -> None:
    out = tmp_path / "pool_costs.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke"
    _positive(res, "seconds")
    for label in ("1. acquire+release", "2. 200 queued", "3. membership", "4. pick ns"):
        assert label in proc.stdout, proc.stdout

    ac = res["acquire_release"]
    _positive(ac, "queue_ns", "pool_ns", "pool_async_with_ns", "ratio", "target_ratio")
    _flag(ac, "meets_target")
    assert len(ac["rounds_ns_per_pair"]["pool"]) == res["settings"]["acquire_rounds"]

    qu = res["queueing"]
    assert qu["setup"]["waiters"] == 200
    _positive(
        qu,
        "probe_floor_ms",
        "create_tasks_ms",
        "enqueue_ms",
        "enqueue_max_stall_ms",
        "drain_ms",
        "drain_max_stall_ms",
        "drain_us_per_handoff",
        "max_stall_ms",
        "target_stall_ms",
    )
    _flag(qu, "meets_target")

    me = res["membership"]
    assert list(me["by_size"]) == ["10"]
    for rec in me["by_size"].values():
        _positive(rec, "construct_s", "start_s", "close_s", "background_stall_ms")
        _positive(rec, "max_change_ms", "max_stall_ms")
        for op in OPS:
            _positive(rec["ops"][op], "count", "median_ms", "max_ms", "max_stall_ms")
    _positive(me, "target_ms")
    _flag(me, "meets_target")
    _flag(me, "max_meets_target")

    pk = res["pick"]
    assert pk["setup"]["sizes"] == [10, 50]
    assert set(pk["strategies"]) == set(STRATEGIES)
    for name, st in pk["strategies"].items():
        _positive(st, "ratio", "pick_ratio")
        _flag(st, "meets_target")
        _flag(st, "acquire_release_meets")
        assert (st["pick_new_keys_ratio"] is not None) == (name == "ip-hash")
        for n in ("10", "50"):
            rec = st["by_size"][n]
            _positive(rec, "median_ns", "iterations_per_round", "size", "pick_ns")
            assert rec["warm_acquires"] >= 0  # min_connections=n warms most at start()
            assert rec["size"] <= rec["backends"] == int(n)
    _flag(pk, "meets_target")


CLIENT_BOUND = SCRIPT.parent / "client_bound.py"
CLIENT_KINDS = (
    "wsclient-aiohttp",
    "wsclient-picows",
    "raw-aiohttp",
    "raw-picows",
    "websockets",
    "haproxy-aiohttp",
)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_client_bound_smoke(tmp_path: Path) -> None:
    """``client_bound.py --smoke``: every client kind runs (or says why it cannot), the
    figures are there, the chart is a PNG, and every backend and HAProxy it started is gone."""
    out = tmp_path / "client_bound.json"
    proc = subprocess.run(
        [sys.executable, str(CLIENT_BOUND), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    tp = res["throughput"]
    assert set(tp["rows"]) == set(CLIENT_KINDS)
    for kind, row in tp["rows"].items():
        if kind == "wsclient-picows" and row["status"] != "ok":
            # Runs once the installed wsclient takes transport="picows"; until then the row
            # says why, in the table too.
            assert row["status"].startswith("not available ("), row
            assert "wsclient (picows)    not available (" in proc.stdout
            continue
        assert row["status"] == "ok", (kind, row["status"])
        rec = row["by_conns"]["2"]
        _positive(rec, "throughput", "p50_us", "p99_us", "client_cpu_us_per_rt")
        _positive(rec, "client_cpu_pct", "rounds")
        assert rec["p50_us"] <= rec["p99_us"]
    assert tp["rows"]["haproxy-aiohttp"]["by_conns"]["2"]["haproxy_cpu_pct"] >= 0
    targets = [r for r in tp["ratios"] if r["num"] == "wsclient-aiohttp"]
    assert {r["figure"] for r in targets} == {"throughput", "client_cpu_us_per_rt"}
    _positive(targets[0], "ratio")

    started = {int(pid) for run in tp["runs"] for pid in run["watched_cpu_pct"]}
    assert len(started) == 4  # three backends and HAProxy
    assert all(_gone(pid) for pid in started), started

    mem = res["memory"]
    assert mem["conns"] == 20
    for kind in ("wsclient-aiohttp", "raw-aiohttp", "raw-picows"):
        assert isinstance(mem["kinds"][kind]["rss_kib_per_conn"], float), mem["kinds"][kind]
    assert isinstance(mem["ratios"][0]["ratio"], float)

    warm = res["warm"]["kinds"]["wsclient-aiohttp"]
    assert warm["conns"] == 40 and warm["backends"] == 2
    assert warm["size_after_window"] == 40
    _positive(warm, "start_s", "rss_bytes", "window_s", "heartbeat_interval_s")
    assert warm["idle_cpu_pct"] >= 0
    for label in ("client-bound throughput", "memory per idle connection", "40 warm"):
        assert label in proc.stdout, proc.stdout
