"""Where the pool's microseconds go on the hot path (acquire -> send -> receive -> release),
in the client-bound setting of ``client_bound.py``: ``.venv/bin/python
benchmarks/profile_hot_path.py`` (about 70 s; not part of ``make bench``).

Writes ``results/profile-client-bound.json`` (layers and grouped profiles) and
``results/profile-client-bound-<kind>.txt`` (cProfile listings), and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import json_safe
from client_bound import LABELS, RESULTS, availability, backends, median, run_client

# The pool's round trip, layer by layer (profile mode): (kind, backends, label).
LAYERS: tuple[tuple[str, int, str], ...] = (
    ("raw-aiohttp", 3, "raw aiohttp, no heartbeat"),
    ("raw-aiohttp-hb", 3, "raw aiohttp, heartbeat=20 (as Connection sets)"),
    ("wsclient-connection", 3, "wsclient Connection (connect(), no pool)"),
    ("wsclient-held", 3, "pool, each worker holds one connection"),
    ("wsclient-aiohttp", 1, "pool, acquire/release per round trip, 1 backend"),
    ("wsclient-aiohttp", 3, "pool, acquire/release per round trip, 3 backends"),
)
PROFILED = ("wsclient-aiohttp", "wsclient-picows", "raw-aiohttp")


def profile_hot_path(status: dict[str, str], rounds: int = 5) -> dict[str, Any]:
    """Where the pool's microseconds go, two ways, at 16 connections:

    1. layers: client CPU per round trip (no profiler) of raw aiohttp, raw aiohttp with a
       heartbeat, wsclient's Connection alone, the pool with connections held, and the
       pool with an acquire/release per round trip over 1 and over 3 backends
       (``LAYERS``), alternating rounds; each difference is what that step adds.
    2. cProfile (thread CPU time) of one 3 s window per kind in ``PROFILED``: own time per
       round trip grouped by module, and the full listing in
       ``results/profile-client-bound-<kind>.txt``.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"conns": 16, "layers": {}, "profiles": {}}
    with backends(3) as servers:
        urls = ",".join(srv.urls[0] for srv in servers)
        all_urls = [srv.urls[0] for srv in servers]
        layers = [(f"{kind}@{nb}", kind, nb, label) for kind, nb, label in LAYERS]
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in layers}
        for r in range(rounds):
            for key, kind, nb, _label in layers[r % len(layers) :] + layers[: r % len(layers)]:
                target = ",".join(all_urls[:nb])
                args = ("--kind", kind, "--urls", target, "--conns", "16", "--window", "1")
                runs[key].append(run_client("rt", *args))
        prev = None
        for key, _kind, _nb, label in layers:
            cpu = median([x["client_cpu_us_per_rt"] for x in runs[key]])
            out["layers"][key] = {
                "label": label,
                "client_cpu_us_per_rt": cpu,
                "added_us": None if prev is None else cpu - prev,
                "throughput": median([x["throughput"] for x in runs[key]]),
                "client_cpu_pct": median([x["client_cpu_pct"] for x in runs[key]]),
                "rounds": [x["client_cpu_us_per_rt"] for x in runs[key]],
            }
            prev = cpu
        for kind in PROFILED:
            if status[kind]:
                out["profiles"][kind] = {"status": status[kind]}
                continue
            args = ("--kind", kind, "--urls", urls, "--conns", "16", "--window", "3")
            res = run_client("rt", *args, "--profile")
            path = RESULTS / f"profile-client-bound-{kind}.txt"
            path.write_text(res["profile"])
            out["profiles"][kind] = {
                "round_trips": res["round_trips"],
                "groups": res["profile_groups"],
                "listing": str(path),
            }
    (RESULTS / "profile-client-bound.json").write_text(
        json.dumps(json_safe(out), indent=2, allow_nan=False) + "\n"
    )
    print(fmt_profile(out))
    return out


def fmt_profile(out: dict[str, Any]) -> str:
    lines = [f"client CPU per round trip by layer ({out['conns']} connections, no profiler)"]
    for rec in out["layers"].values():
        added = "" if rec["added_us"] is None else f"  ({rec['added_us']:+.1f} us)"
        lines.append(
            f"  {rec['label']:<48} {rec['client_cpu_us_per_rt']:6.1f} us{added}"
            f"  {rec['throughput']:>9,.0f} rt/s, client {rec['client_cpu_pct']:.0f}%"
        )
    for kind, prof in out["profiles"].items():
        if "groups" not in prof:
            lines.append(f"{LABELS[kind]}: {prof['status']}")
            continue
        lines.append(f"{LABELS[kind]} under cProfile: own CPU per round trip by module")
        total = sum(us for _g, us, _c in prof["groups"])
        for group, us, calls in prof["groups"]:
            lines.append(f"  {group:<46} {us:6.2f} us {us / total:6.1%} {calls:4d} calls")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the layer runs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    profile_hot_path(availability(), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
