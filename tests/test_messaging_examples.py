"""The messaging examples run as shipped (against the `websockets` server), and the
``request`` benchmark runs end to end in its smoke size (its figures are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "chat_channels.py",
            [
                "general: ['bob', 'cid', 'dee']",
                "random: ['ann', 'bob']",
                "general after cid left: ['ann', 'bob', 'dee']",
                "closed 3",
            ],
        ),
        (
            "notifications.py",
            ["SIGKILL", "reconnected:", "60 notifications, none twice, none lost"],
        ),
        ("rpc.py", ["100 concurrent calls answered", "invalid call -> error invalid_data"]),
    ],
)
def test_example_runs(example: str, expected: list[str]) -> None:
    """Each example exits 0 and prints what its docstring promises."""
    out = _run(str(ROOT / "examples" / example))
    for line in expected:
        assert line in out, out


def test_request_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/request_vs_acquire.py writes both arms' figures and the ratio."""
    out = tmp_path / "rva.json"
    _run(str(ROOT / "benchmarks" / "request_vs_acquire.py"), "--smoke", "--json", str(out))
    res = json.loads(out.read_text())
    assert res["request_per_second"] > 0 and res["acquire_per_second"] > 0
    assert res["ratio"] > 0 and isinstance(res["meets_target"], bool)
    assert res["setup"]["callers"] == 256 and res["setup"]["connections"] == 8
