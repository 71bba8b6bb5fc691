"""PNG plots of one session's results (matplotlib, from the ``bench`` extra; imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STRATEGY_COLORS = {"balanced": "#1f77b4", "midpoint": "#d62728", "round-robin": "#7f7f7f"}
PHASE_COLORS = {
    "plan+preflight+startup": "#9467bd", "prepare": "#1f77b4", "agent start": "#ff7f0e",
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
    if "dispatch" in s:
        paths.append(_dispatch(s["dispatch"], out_dir / "dispatch.png"))
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
                    segs.append(next(r[st]["dispatch_ratio"] for r in rows if r["batches"] == mid))
                ax.plot(xs, segs, "x", color="orange", markersize=9, mew=2,
                        label="balanced, run-time dispatch (run state, simulated)")
        for r in sc["measured"]:
            if r["workers"] == n and r["shape"] in shapes:
                j = shapes.index(r["shape"]) + (strategies.index(r["strategy"]) - 1) * 0.27
                ax.plot(j, r["span_ratio"]["median"], "kD", markersize=6,
                        label="measured (agents' span)" if r["strategy"] == "balanced" else None)
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.axhline(1.3, color="g", linestyle=":", linewidth=1, label="target 1.3 (mixed DAG, measured)")
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
        rows = sorted((r for r in runs if r["files"] == files), key=lambda r: r["workers"])
        xs = [r["workers"] for r in rows]
        left.plot(xs, [r["overhead"]["median"] for r in rows], "o-", label=f"{files:,} files")
    top = max(r["workers"] for r in runs)
    left.plot([1, top], [1.1, 1 + 0.1 * top], "g:", label="target 1 s + 0.1 s/worker (1,000 files)")
    left.set_xscale("log", base=2)
    ticks = sorted({r["workers"] for r in runs})
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.set_xlabel("workers (one unit each, agent start only)")
    left.set_ylabel("coordinator overhead, s (median)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)

    labels: list[str] = []
    stacks: dict[str, list[float]] = {k: [] for k in PHASE_COLORS}
    for r in runs:
        ph = {p: v["median"] for p, v in r["phases"].items()}
        k = r["workers"]
        labels.append(f"{r['files']}f/{k}w")
        stacks["plan+preflight+startup"].append(ph["planning"] + ph["preflight"] + ph["startup"])
        stacks["prepare"].append(ph["prepare"] / k)
        stacks["agent start"].append(ph["agent_start"] / k)
        stacks["commit+return"].append(ph["commit_and_return"] / k)
        stacks["merge"].append(ph["merge"])
        stacks["cleanup"].append(ph["cleanup"])
    bottom = [0.0] * len(labels)
    for name, vals in stacks.items():
        right.bar(range(len(labels)), vals, bottom=bottom, color=PHASE_COLORS[name], label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    right.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    right.set_ylabel("seconds (per-unit phases: mean per unit)")
    right.set_title("phases (files / workers)")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _dispatch(d: dict[str, Any], path: Path) -> Path:
    """One Gantt chart per way of giving estimates (the first run of each): which worker ran which batch when,
    against the lower bound; and the CAST stages run."""
    import matplotlib.pyplot as plt

    sp, cast = d["spread"], d["cast_stages"]
    panels = [(f"estimates: {r['estimates']} (wall / bound {r['wall_ratio']['median']:.2f})", r["runs"][0],
               sp["plan"]["lower_bound"]) for r in sp["rows"] if r["runs"]]
    if cast["runs"]:
        panels.append((f"CAST stages, {cast['form']} (wall / stage bound {cast['wall_ratio']['median']:.2f})",
                       cast["runs"][0], cast["stage_bound"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels) + 0.6), squeeze=False)
    longest = max(sp["plan"]["seconds"], default=1.0)
    cmap = plt.get_cmap("viridis")
    for ax, (title, run, lb) in zip(axes[:, 0], panels, strict=True):
        for uid, worker, start, end in run["timeline"]:
            ax.barh(worker, end - start, left=start, color=cmap(min(1.0, (end - start) / longest)),
                    edgecolor="k", linewidth=0.5)
            if end - start > 0.04 * run["wall"]:
                ax.text(start + (end - start) / 2, worker, uid, ha="center", va="center", fontsize=7, color="w")
        t0 = min((s for _, _, s, _ in run["timeline"]), default=0.0)
        ax.axvline(t0 + lb, color="g", linestyle=":", label="agents' start + lower bound")
        ax.axvline(run["wall"], color="r", linestyle="--", label="end of the run (wall)")
        ax.set_yticks(range(run["used_workers"]), [f"w{k}" for k in range(run["used_workers"])])
        ax.set_xlim(left=0)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from the start of the run")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    return _save(fig, path)
