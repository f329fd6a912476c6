"""``benchmarks/metrics_cost.py`` end to end with tiny sizes (its undocumented ``--smoke``).

The figures are not judged (a loaded machine moves them; ``make bench`` reports
them): the test checks that the script runs against the current pool and
metrics module and writes every figure the README reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics_cost.py"


def test_metrics_cost_smoke(tmp_path: Path) -> None:
    out = tmp_path / "metrics_cost.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    arms = ("off", "off_control", "prometheus", "otel_noop", "otel_sdk", "otel_sdk_lean")
    assert set(res["median_ns"]) == set(arms) == set(res["delta_vs_off_ns"])
    assert all(res["median_ns"][arm] > 0 for arm in arms)
    assert len(res["rounds_ns_per_pair"]["off"]) == 3
    assert set(res["meets_target"]) == set(arms[2:])
    assert res["disabled_hook_check_ns"] >= 0 and res["families_scraped"] > 10
    assert res["collection"]["with_round_pending_ns_per_pair"] > 0
    assert "prometheus" in proc.stdout and "vs off" in proc.stdout
