"""``benchmarks/pool_costs.py`` end to end with tiny sizes (its undocumented ``--smoke``).

The figures themselves are not judged here (a loaded machine moves them); the test
checks that the script runs against the current pool, stops what it started, and
writes every figure the README and ``run.py`` read, as a positive number.
"""

from __future__ import annotations

import json
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
    for label in ("1. acquire+release", "2. 200 queued", "3. membership", "4. acquire+release"):
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
    for st in pk["strategies"].values():
        _positive(st, "ratio")
        _flag(st, "meets_target")
        for n in ("10", "50"):
            rec = st["by_size"][n]
            _positive(rec, "median_ns", "iterations_per_round", "size")
            assert rec["warm_acquires"] >= 0  # min_connections=n warms most at start()
            assert rec["size"] <= rec["backends"] == int(n)
    _flag(pk, "meets_target")
