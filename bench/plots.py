"""PNG plots of one session's results (matplotlib, from the ``bench`` extra; imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STRATEGY_COLORS = {"balanced": "#1f77b4", "midpoint": "#d62728", "round-robin": "#7f7f7f"}
PHASE_COLORS = {
    "plan+preflight+startup": "#9467bd", "code transfer": "#1f77b4", "agent start": "#ff7f0e",
    "commit+return": "#2ca02c", "merge": "#d62728", "cleanup": "#8c564b",
}


def draw(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    s = results["sections"]
    paths = []
    if "speedup" in s:
        paths.append(_speedup(s["speedup"]["speedup"], out_dir / "speedup.png"))
    if "scheduling" in s:
        paths.append(_scheduling(s["scheduling"], out_dir / "scheduling.png"))
    if "overhead" in s:
        paths.append(_overhead(s["overhead"], out_dir / "overhead.png"))
    return paths


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _speedup(su: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = su["rows"]
    w = [r["workers"] for r in rows]
    med = [r["speedup"]["median"] for r in rows]
    err = [[m - r["speedup"]["min"] for m, r in zip(med, rows, strict=True)],
           [r["speedup"]["max"] - m for m, r in zip(med, rows, strict=True)]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(w, [r["ideal"] for r in rows], "k--", label="ideal (work / lower bound)")
    ax.errorbar(w, med, yerr=err, fmt="o-", capsize=4, label="measured (median, min-max)")
    for x, m, r in zip(w, med, rows, strict=True):
        ax.annotate(f"eff {r['efficiency']['median']:.2f}", (x, m), textcoords="offset points", xytext=(6, -12),
                    fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(w, [str(x) for x in w])
    ax.set_xlabel("local workers")
    ax.set_ylabel("speedup over 1 worker")
    plan = su["plan"]
    ax.set_title(f"{plan['batches']} independent {plan['seconds']:g} s batches, fake agent")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _scheduling(sc: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    pred = sc["predicted"]
    workers = sorted({r["workers"] for r in pred})
    shown = [w for w in workers if w in (4, 8)] or workers[-2:]
    shapes = list(dict.fromkeys(r["shape"] for r in pred))
    strategies = list(STRATEGY_COLORS)
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.8), squeeze=False)
    for ax, n in zip(axes[0], shown, strict=True):
        for i, st in enumerate(strategies):
            vals = []
            for shape in shapes:
                rows = [r for r in pred if r["shape"] == shape and r["workers"] == n]
                sizes = sorted(r["batches"] for r in rows)
                mid = sizes[len(sizes) // 2]
                vals.append(next(r[st]["ratio"] for r in rows if r["batches"] == mid))
            xs = [j + (i - 1) * 0.27 for j in range(len(shapes))]
            ax.bar(xs, vals, width=0.27, color=STRATEGY_COLORS[st], label=f"{st} (predicted)")
            if st == "balanced":
                segs = []
                for shape in shapes:
                    rows = [r for r in pred if r["shape"] == shape and r["workers"] == n]
                    sizes = sorted(r["batches"] for r in rows)
                    mid = sizes[len(sizes) // 2]
                    segs.append(next(r[st]["segment_ratio"] for r in rows if r["batches"] == mid))
                ax.plot(xs, segs, "x", color="orange", markersize=9, mew=2,
                        label="balanced with today's segment hand-back")
        for r in sc["measured"]:
            if r["workers"] == n and r["shape"] in shapes:
                j = shapes.index(r["shape"]) + (strategies.index(r["strategy"]) - 1) * 0.27
                ax.plot(j, r["span_ratio"]["median"], "kD", markersize=6,
                        label="measured (agents' span)" if r["strategy"] == "balanced" else None)
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.axhline(1.1, color="g", linestyle=":", linewidth=1, label="target 1.1 (mixed DAG)")
        ax.set_xticks(range(len(shapes)), [s.replace("independent-", "indep. ") for s in shapes], rotation=15)
        ax.set_ylabel("makespan / lower bound")
        ax.set_title(f"N = {n} workers (middle plan size)")
        ax.grid(axis="y", alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8)
    return _save(fig, path, rect=(0, 0.14, 1, 1))


def _overhead(ov: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    runs = ov["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for files in sorted({r["files"] for r in runs}):
        rows = sorted((r for r in runs if r["files"] == files), key=lambda r: r["streams"])
        xs = [r["streams"] for r in rows]
        left.plot(xs, [r["overhead"]["median"] for r in rows], "o-", label=f"{files:,} files")
    top = max(r["streams"] for r in runs)
    left.plot([1, top], [1.1, 1 + 0.1 * top], "g:", label="target 1 s + 0.1 s/stream (1,000 files)")
    left.set_xscale("log", base=2)
    ticks = sorted({r["streams"] for r in runs})
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.set_xlabel("streams (one batch each, agent start only)")
    left.set_ylabel("coordinator overhead, s (median)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)

    labels: list[str] = []
    stacks: dict[str, list[float]] = {k: [] for k in PHASE_COLORS}
    for r in runs:
        ph = {p: v["median"] for p, v in r["phases"].items()}
        k = r["streams"]
        labels.append(f"{r['files']}f/{k}s")
        stacks["plan+preflight+startup"].append(ph["planning"] + ph["preflight"] + ph["startup"])
        stacks["code transfer"].append(ph["code_transfer"] / k)
        stacks["agent start"].append(ph["agent_start"] / k)
        stacks["commit+return"].append(ph["commit_and_return"] / k)
        stacks["merge"].append(ph["merge"])
        stacks["cleanup"].append(ph["cleanup"])
    bottom = [0.0] * len(labels)
    for name, vals in stacks.items():
        right.bar(range(len(labels)), vals, bottom=bottom, color=PHASE_COLORS[name], label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    right.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    right.set_ylabel("seconds (per-stream phases: mean per stream)")
    right.set_title("phases (files / streams)")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    return _save(fig, path)
