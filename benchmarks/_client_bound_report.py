"""The table and the chart of ``client_bound.py``, from its result alone.

Everything they show comes from the result dict (the JSON the script writes: its labels and
limits included), so ``run.py`` can print and plot an embedded result, and a saved JSON can
be rendered again: ``python benchmarks/_client_bound_report.py results/client_bound.json``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def fmt_table(res: dict[str, Any], indent: str = "") -> str:
    """The printed table of a ``client_bound.py`` result (as written to its JSON)."""
    labels: dict[str, str] = res["labels"]
    limits: dict[str, float] = res["limits"]
    lines: list[str] = []
    tp = res.get("throughput")
    if tp is not None:
        lines.append("client-bound throughput (100 B round trips; medians of rounds)")
        lines.append(
            f"{'client':<21}{'conns':>6}{'rt/s':>10}{'p50 us':>9}{'p99 us':>9}"
            f"{'cpu us/rt':>11}{'rt/s/core':>11}{'client%':>9}{'backends%':>11}{'others%':>9}"
        )
        for row in tp["rows"].values():
            if row["status"] != "ok":
                lines.append(f"{row['label']:<21}{row['status']}")
                continue
            for n, rec in row["by_conns"].items():
                extra = (
                    f" (+haproxy {rec['haproxy_cpu_pct']:.0f}%)" if "haproxy_cpu_pct" in rec else ""
                )
                lines.append(
                    f"{row['label']:<21}{n:>6}{rec['throughput']:>10,.0f}{rec['p50_us']:>9.0f}"
                    f"{rec['p99_us']:>9.0f}{rec['client_cpu_us_per_rt']:>11.1f}"
                    f"{1e6 / rec['client_cpu_us_per_rt']:>11,.0f}"
                    f"{rec['client_cpu_pct']:>9.0f}{rec['backend_cpu_pct_sum']:>11.0f}"
                    f"{rec['others_cpu_pct']:>9.0f}{extra}"
                )
        lines.append("ratios (median / median [paired per-round min-max]; targets at 16, 64)")
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in tp["ratios"]:
            groups.setdefault((r["num"], r["den"], r["figure"]), []).append(r)
        for (num, den, figure), recs in groups.items():
            what = f"  {labels[num]} / {labels[den]} {figure}"
            target = next((r["target"] for r in recs if "target" in r), None)
            if target is not None:
                what += f" (target {target})"
            missing = next((r["status"] for r in recs if r["ratio"] is None), None)
            if missing is not None:
                lines.append(f"{what}: {missing}")
                continue
            parts = []
            for r in recs:
                verdict = ""
                if "meets_target" in r:
                    verdict = " met" if r["meets_target"] else " MISSED"
                parts.append(
                    f"@{r['conns']} {r['ratio']:.2f} [{_fmt(r['paired_min'], '.2f')}-"
                    f"{_fmt(r['paired_max'], '.2f')}]{verdict}"
                )
            lines.append(f"{what}: " + ", ".join(parts))
        bound = [
            rec["client_cpu_pct"] for row in tp["rows"].values() for rec in row["by_conns"].values()
        ]
        back = [
            rec["backend_cpu_pct_max"]
            for row in tp["rows"].values()
            for rec in row["by_conns"].values()
        ]
        others = [
            rec["others_cpu_pct"] for row in tp["rows"].values() for rec in row["by_conns"].values()
        ]
        if bound:
            lines.append(
                f"client CPU {min(bound):.0f}-{max(bound):.0f}% of one core per row "
                f"(client-bound when >= {limits['client_bound_cpu_pct']:.0f}%); busiest backend "
                f"process {max(back):.0f}% of a core; other processes on the machine "
                f"{min(others):.0f}-{max(others):.0f}% of a core "
                f"({res['environment']['cpus']} cores)"
            )
    mem = res.get("memory")
    if mem is not None:
        lines.append(f"memory per idle connection ({mem['conns']} connections, RSS)")
        for kind, rec in mem["kinds"].items():
            if "rss_kib_per_conn" in rec:
                lines.append(f"  {labels[kind]:<20} {rec['rss_kib_per_conn']:6.1f} KiB")
            else:
                lines.append(f"  {labels[kind]:<20} {rec['status']}")
        for r in mem["ratios"]:
            if r["ratio"] is not None:
                verdict = "met" if r["meets_target"] else "MISSED"
                lines.append(
                    f"  {labels[r['num']]} / {labels[r['den']]}: {r['ratio']:.2f} "
                    f"(target {r['target']}: {verdict})"
                )
    warm = res.get("warm")
    if warm is not None:
        lines.append(
            f"{warm['conns']:,} warm connections over {warm['backends']} backends, one process"
        )
        for kind, rec in warm["kinds"].items():
            if "idle_cpu_pct" not in rec:
                lines.append(f"  {labels[kind]:<20} {rec['status']}")
                continue
            verdict = "met" if rec["meets_target"] else "MISSED"
            lines.append(
                f"  {labels[kind]:<20} start {rec['start_s']:.1f} s, RSS "
                f"{rec['rss_bytes'] / 2**20:.0f} MiB ({rec['rss_kib_per_conn']:.1f} KiB/conn), "
                f"idle CPU {rec['idle_cpu_pct']:.1f}% of a core over {rec['window_s']:.0f} s "
                f"(target < {limits['idle_cpu_target_pct']:.0f}%: {verdict})"
            )
    return "\n".join(indent + line for line in lines)


def write_chart(res: dict[str, Any], path: Path) -> Path | None:
    """Throughput and client CPU per round trip, grouped by connection count."""
    tp = res.get("throughput")
    if tp is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return None
    rows = {k: v for k, v in tp["rows"].items() if v["status"] == "ok"}
    conns = [str(n) for n in tp["setup"]["conns"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(rows))
    for ax, key, title, scale in (
        (axes[0], "throughput", "round trips/s (thousands)", 1e-3),
        (axes[1], "client_cpu_us_per_rt", "client CPU per round trip (us)", 1.0),
    ):
        for i, row in enumerate(rows.values()):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(conns))]
            ys = [row["by_conns"].get(n, {}).get(key, 0.0) * scale for n in conns]
            ax.bar(xs, ys, width, label=row["label"])
        ax.set_xticks(range(len(conns)), [f"{n} conns" for n in conns])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    absent = [f"{v['label']}: {v['status']}" for v in tp["rows"].values() if v["status"] != "ok"]
    if absent:
        fig.text(0.01, 0.01, "; ".join(absent), fontsize=7)
    env = res.get("environment", {})
    fig.suptitle(
        f"wsclient client-bound benchmark, 100 B echo ({env.get('date', '')}, "
        f"{env.get('cpus', '?')} CPUs, Python {env.get('python', '')})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04 if absent else 0, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    result = json.loads(Path(sys.argv[1]).read_text())
    print(fmt_table(result))
    print(write_chart(result, Path(sys.argv[1]).with_suffix(".png")))
