"""The issue's targets checked against one session's results, and REPORT.md.

Every target gets a status (pass, miss, not measured), the measured value, the margin (by how much it passes
or misses) and a note on what was measured and, for a miss, why (from the measured phases where possible).
"""

from __future__ import annotations

from typing import Any

from bench.harness import PHASE_HELP, PHASES
from bench.stats import spread

MB = 1e6 / 2**20  # MiB per MB: targets are in MB, the probe reports MiB


def _target(name: str, target: str, measured: str, ok: bool | None, margin: str, note: str) -> dict[str, Any]:
    status = "not measured" if ok is None else ("pass" if ok else "miss")
    return {"name": name, "target": target, "measured": measured, "status": status, "margin": margin, "note": note}


def _missing(name: str, target: str, why: str) -> dict[str, Any]:
    return _target(name, target, "-", None, "-", why)


def _pct(value: float, limit: float, higher_is_better: bool) -> str:
    diff = (value - limit) / limit * 100
    if higher_is_better:
        return f"{diff:+.0f}% vs the target" if diff else "exactly at the target"
    return f"{-diff:+.0f}% headroom" if diff <= 0 else f"{diff:.0f}% over"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results["sections"]
    out = []
    out.append(_efficiency_target(s.get("speedup")))
    out.append(_done_when_target(s.get("speedup")))
    out.extend(_scheduling_targets(s.get("scheduling")))
    out.append(_overhead_target(s.get("overhead")))
    out.extend(_scale_targets(s.get("scale")))
    out.append(_ray_target(s.get("backends")))
    return out


def _efficiency_target(sp: dict[str, Any] | None) -> dict[str, Any]:
    name, target = "16 x 5 s independent batches, 8 local workers", "efficiency >= 0.9"
    if not sp:
        return _missing(name, target, "speedup section not run")
    plan = sp["speedup"]["plan"]
    rows = {r["workers"]: r for r in sp["speedup"]["rows"]}
    if (plan["batches"], plan["seconds"]) == (16, 5.0) and 8 in rows:
        eff = rows[8]["efficiency"]
        note = f"median over {sp['speedup']['reps']} repetitions against a measured serial run"
        value, measured = eff["median"], f"{eff['median']:.3f} (range {eff['min']:.3f}-{eff['max']:.3f})"
        run = rows[8]["runs"][0]
    elif "target_probe" in sp:
        p = sp["target_probe"]
        value = p["conservative_efficiency"]
        measured = f">= {value:.3f}"
        note = ("quick profile: one 8-worker run, the serial time taken as the plan's pure work (80 s, no "
                "overhead), so the real efficiency is at least this; the full profile measures the serial run")
        run = p["runs"][0]
    else:
        return _missing(name, target, "the profile runs neither 16 x 5 s batches nor the probe")
    ok = value >= 0.9
    if not ok:
        ph, k, n = run["phases"], run["streams"], run["batches"]
        note += (f"; why (one run): wall {run['wall']:.1f} s against a lower bound of "
                 f"{run['predicted']['lower_bound']:.0f} s; worktree creation {ph['code_transfer'] / k:.2f} s per "
                 f"stream (all {k} at once), agent start {ph['agent_start'] / n:.2f} s and commit "
                 f"{ph['commit_and_return'] / n:.2f} s per batch, merge {ph['merge']:.2f} s, cleanup "
                 f"{ph['cleanup']:.2f} s; load average {run['loadavg']:.1f} on {k} streams and 2 cores")
    return _target(name, target, measured, ok, _pct(value, 0.9, True), note)


def _done_when_target(sp: dict[str, Any] | None) -> dict[str, Any]:
    name, target = "core issue: 6 x 3 s independent batches, --workers 6 vs --workers 1", "ratio < 1/3 (0.333)"
    if not sp:
        return _missing(name, target, "speedup section not run")
    d = sp["done_when"]
    plan = d["plan"]
    if (plan["batches"], plan["seconds"], d["workers"]) != (6, 3.0, 6):
        return _missing(name, target, f"this profile runs {plan['batches']} x {plan['seconds']} s instead")
    r = d["ratio"]
    ok = r["max"] < 1 / 3
    return _target(name, target, f"{r['median']:.3f} (range {r['min']:.3f}-{r['max']:.3f}), speedup "
                   f"{d['speedup']['median']:.2f}x", ok, _pct(r["median"], 1 / 3, False),
                   f"parallel wall / serial wall, {len(d['runs']) // 2} repetition(s); pass needs every "
                   "repetition under 1/3")


def _scheduling_targets(sc: dict[str, Any] | None) -> list[dict[str, Any]]:
    n1, t1 = "mixed DAG, default strategy (predicted)", "makespan <= 1.1 x lower bound"
    n2, t2 = "mixed DAG and chains, default vs midpoint split (predicted, N >= 4)", "midpoint / balanced >= 1.5"
    n3, t3 = "mixed DAG, default strategy (measured run)", "makespan <= 1.1 x lower bound"
    n4, t4 = "mixed DAG, default vs midpoint split (measured run)", "midpoint / balanced >= 1.5"
    if not sc:
        return [_missing(n, t, "scheduling section not run") for n, t in ((n1, t1), (n2, t2), (n3, t3), (n4, t4))]
    pred = sc["predicted"]
    mixed = [r for r in pred if r["shape"] == "mixed-dag"]
    worst = max(mixed, key=lambda r: r["balanced"]["ratio"])
    w = worst["balanced"]["ratio"]
    over = [r for r in mixed if r["balanced"]["ratio"] > 1.1]
    note1 = (f"worst of {len(mixed)} (size, N) cases: {worst['batches']} batches at N={worst['workers']}; "
             f"carried out with today's segment hand-back the worst is "
             f"{max(r['balanced']['segment_ratio'] for r in mixed):.2f}")
    if over:
        note1 += "; over 1.1 at " + ", ".join(f"{r['batches']}b/N={r['workers']} ({r['balanced']['ratio']:.2f})"
                                             for r in over)
        note1 += ("; why: the balanced strategy is a list-scheduling heuristic, guaranteed only within work/N + "
                  "(1 - 1/N) x critical path (Graham), not within 1.1 x max(critical path, work/N); the misses are "
                  "where workers idle behind cross-stream waits. The lower bound itself may be unreachable there, "
                  "so part of the gap may not be the scheduler's")
    out = [_target(n1, t1, f"worst {w:.3f}", w <= 1.1, _pct(w, 1.1, False), note1)]

    chained = [r for r in pred if r["shape"] in ("mixed-dag", "chains") and r["workers"] >= 4]
    low = min(chained, key=lambda r: r["midpoint_over_balanced"]) if chained else None
    if low is None:
        out.append(_missing(n2, t2, "no plan with N >= 4 in this profile"))
    else:
        v = low["midpoint_over_balanced"]
        out.append(_target(n2, t2, f"lowest {v:.3f}x", v >= 1.5, _pct(v, 1.5, True),
                           f"lowest of {len(chained)} cases, at {low['shape']} {low['batches']} batches N="
                           f"{low['workers']}; every such plan has at least 3 independent chains"))

    meas = {(r["shape"], r["strategy"]): r for r in sc["measured"]}
    bal, mid = meas.get(("mixed-dag", "balanced")), meas.get(("mixed-dag", "midpoint"))
    if not bal or not mid:
        out += [_missing(n3, t3, "no measured mixed-DAG runs"), _missing(n4, t4, "no measured mixed-DAG runs")]
        return out
    span = bal["span_ratio"]["median"]
    note3 = (f"{bal['batches']} batches, N={bal['workers']}, agents' span (first start to last end) over the lower "
             f"bound of the requested sleeps; the scheduler predicted {bal['predicted_ratio']:.2f}; whole wall "
             f"time over the bound {bal['wall_ratio']['median']:.2f}")
    seg = next((r["balanced"]["segment_ratio"] for r in pred if r["shape"] == "mixed-dag"
                and r["batches"] == bal["batches"] and r["workers"] == bal["workers"]), None)
    if span > 1.1:
        ph, nb = bal["runs"][0]["phases"], bal["batches"]
        per_batch = (ph["agent_start"] + ph["commit_and_return"]) / nb
        note3 += ("; why: every batch on the critical path adds the agent's start-up, its commit and, across "
                  f"streams, a dependency merge ({per_batch:.2f} s per batch in the first run, against batches "
                  f"of {bal['batch_seconds'][0]:.2f}-{bal['batch_seconds'][1]:.2f} s); the segment hand-back "
                  "alone, simulated, gives " + (f"{seg:.2f}" if seg else "?") + " x the bound")
    out.append(_target(n3, t3, f"{span:.3f}", span <= 1.1, _pct(span, 1.1, False), note3))
    v = mid["span_ratio"]["median"] / bal["span_ratio"]["median"]
    predicted_v = mid["predicted_ratio"] / bal["predicted_ratio"]
    out.append(_target(n4, t4, f"{v:.2f}x", v >= 1.5, _pct(v, 1.5, True),
                       f"agents' span, midpoint over balanced (the scheduler predicted {predicted_v:.2f}x); "
                       "per-batch overhead on the critical path eats the difference with batches this short"))
    return out


def _overhead_target(ov: dict[str, Any] | None) -> dict[str, Any]:
    name, target = "coordinator overhead, 1,000-file repo", "<= 1 s + 0.1 s per stream"
    rows = [r for r in (ov or {}).get("runs", []) if r["files"] == 1000]
    if not rows:
        return _missing(name, target, "no runs on a 1,000-file repository in this profile")
    parts, worst, ok = [], None, True
    for r in rows:
        limit = 1 + 0.1 * r["streams"]
        v = r["overhead"]["median"]
        parts.append(f"{r['streams']} streams: {v:.2f} s (limit {limit:.1f})")
        ok = ok and v <= limit
        if worst is None or v / limit > worst[0]:
            worst = (v / limit, r)
    assert worst is not None
    ratio, wr = worst
    note = ("wall time minus the agents' own time on the busiest stream (batches that only start the fake agent, "
            "one per stream); worst at " + f"{wr['streams']} streams")
    if not ok:
        ph = {p: wr["phases"][p]["median"] for p in ("code_transfer", "commit_and_return", "merge", "cleanup",
                                                   "startup", "planning", "preflight")}
        k = wr["streams"]
        per_stream = {"code_transfer", "commit_and_return"}
        big = sorted(ph.items(), key=lambda kv: -(kv[1] / k if kv[0] in per_stream else kv[1]))[:2]
        note += "; largest parts: " + ", ".join(
            f"{p} {v / k:.2f} s per stream, {k} in parallel" if p in per_stream else f"{p} {v:.2f} s (sequential)"
            for p, v in big)
        note += f"; load average {wr['runs'][0]['loadavg']:.1f}"
    margin = f"worst {ratio:.2f} x the limit" + ("" if ok else f" ({(ratio - 1) * 100:.0f}% over)")
    return _target(name, target, "; ".join(parts), ok, margin, note)


def _scale_targets(sc: dict[str, Any] | None) -> list[dict[str, Any]]:
    n1, t1 = "planning 10,000 batches (parse + schedule)", "< 1 s"
    n2, t2 = "coordinator memory at 64 streams", "< 200 MB"
    if not sc:
        return [_missing(n1, t1, "scale section not run"), _missing(n2, t2, "scale section not run")]
    out = []
    big = [r for r in sc["planning"] if r["batches"] >= 10_000]
    if big:
        r = big[0]
        v = r["planning"]["min"]
        out.append(_target(n1, t1, f"{v:.3f} s best of {r['planning']['n']} (parse {r['parse']['min']:.3f}, "
                           f"schedule {r['schedule']['min']:.3f}); median {r['planning']['median']:.3f} s",
                           v < 1.0, _pct(v, 1.0, False),
                           f"mixed-DAG plan of {r['batches']} batches, {r['plan_bytes'] / 1e6:.1f} MB of plan text, "
                           f"N={r['workers']}; pure CPU-bound code, so judged on its best run (the others are slowed "
                           f"by whatever else the machine runs); registering the plan in the journal as Runner.run "
                           f"does takes another {r['registration']['min']:.2f} s (not part of the target)"))
    else:
        out.append(_missing(n1, t1, "this profile plans no 10,000-batch plan"))
    m = sc["memory"]
    if "error" in m:
        out.append(_missing(n2, t2, f"probe failed: {m['error'][:200]}"))
    elif m["streams"] < 64:
        out.append(_missing(n2, t2, f"this profile probes {m['streams']} streams"))
    else:
        mb = m["peak_rss_mib"] / MB
        out.append(_target(n2, t2, f"{mb:.0f} MB peak RSS", mb < 200, _pct(mb, 200, False),
                           f"coordinator process alone (agents not counted), {m['streams']} streams of "
                           f"{m['seconds']:g} s; {m['baseline_rss_mib'] / MB:.0f} MB after imports"))
    return out


def _ray_target(be: dict[str, Any] | None) -> dict[str, Any]:
    name, target = "Ray, local multi-node cluster, 64 x 5 s batches, 32 workers", "efficiency >= 0.8"
    if not be:
        return _missing(name, target, "backends section not run")
    ray = be["backends"].get("ray", {})
    if not ray.get("available"):
        return _missing(name, target, f"Ray backend not available: {ray.get('reason', '-')}")
    rt = be.get("ray_target")
    if not rt:
        return _missing(name, target, "runs in the full profile only")
    if "error" in rt:
        return _missing(name, target, f"run failed: {rt['error'][:200]}")
    if (rt["batches"], rt["seconds"], rt["workers"]) != (64, 5.0, 32):
        return _missing(name, target, f"this profile runs {rt['batches']} x {rt['seconds']:g} s at {rt['workers']}")
    v = rt["conservative_efficiency"]
    note = (f"on {be.get('ray_cluster')}; serial time taken as the plan's pure work "
            f"({rt['batches'] * rt['seconds']:g} s), so the real efficiency is at least this")
    if v < 0.8:
        run = rt["runs"][0]
        ph, k, n = run["phases"], run["streams"], run["batches"]
        note += (f"; why: wall {run['wall']:.1f} s against a lower bound of {run['predicted']['lower_bound']:.0f} s; "
                 f"submit to first agent start {ph['code_transfer'] / k:.1f} s per stream (Ray task start, a worker "
                 f"process per task, bundle and clone; {k} at once on this machine), "
                 f"agent start {ph['agent_start'] / n:.2f} s per batch; load average {run['loadavg']:.1f}")
    return _target(name, target, f">= {v:.3f}", v >= 0.8, _pct(v, 0.8, True), note)


# --- REPORT.md -------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(results: dict[str, Any]) -> str:
    """The short table for the README: the targets with their status."""
    rows = [[t["name"], t["target"], t["measured"], t["status"]] for t in results["targets"]]
    return _table(["what", "target", "measured", "status"], rows)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["sections"]
    parts = [
        f"# distpar benchmark report ({results['profile']} profile)",
        "",
        f"Session started {results['started']}, took {results['elapsed']:.0f} s. {results['note']}",
        "",
        _table(["machine", ""], [
            ["CPU", f"{m['cpu_count']} x {m['cpu_model']} ({m['cpus_usable']} usable)"],
            ["memory", f"{m['memory_gib']} GiB"], ["OS", f"{m['os']}, kernel {m['kernel']}"],
            ["Python / git", f"{m['python']} / {m['git']}"],
            ["distpar", f"{m['distpar']} at " + (f"{m['distpar_commit'][:12]}" if m["distpar_commit"] else
                                                   "an unknown commit (not a git checkout)")
                        + (" with uncommitted changes" if m["distpar_tree_dirty"] else "")],
            ["load average (1 min) at start / end", f"{m['loadavg_at_start'][0]} / {m['loadavg_at_end'][0]}"],
            ["load average at each section's start", ", ".join(f"{k} {v['loadavg'][0]}" for k, v in s.items())],
        ]),
        "",
        f"This machine has {m['cpus_usable']} usable cores: a load average above that means other work (for "
        "example test suites) competed with the benchmark, which makes absolute times longer and noisier; "
        "compare the ratios.",
        "",
        "## Targets",
        "",
        _table(["what", "target", "measured", "status", "margin", "note"],
               [[t["name"], t["target"], t["measured"], f"**{t['status']}**", t["margin"], t["note"]]
                for t in results["targets"]]),
    ]
    if "speedup" in s:
        parts += _speedup_md(s["speedup"])
    if "scheduling" in s:
        parts += _scheduling_md(s["scheduling"], results["config"])
    if "overhead" in s:
        parts += _overhead_md(s["overhead"], results)
    if "scale" in s:
        parts += _scale_md(s["scale"], results)
    if "backends" in s:
        parts += _backends_md(s["backends"])
    if results.get("section_errors"):
        parts += ["", "## Sections that failed", ""]
        parts += [f"- **{k}**: {v}" for k, v in results["section_errors"].items()]
    fails = results.get("failed_runs") or []
    parts += ["", "## Failed runs", ""]
    parts += [f"{len(fails)} run(s) did not end ok and were run again (each attempt is listed; the tables hold "
              "the successful attempts only):", ""] if fails else ["None: every run ended ok at the first attempt."]
    parts += [f"- {f['label']} (attempt {f['attempt']}): {f['error'][:300]}" for f in fails]
    parts += ["", "## Plots", ""]
    parts += [f"![{p}]({p})" for p in results.get("plots", [])] or [results.get("plots_skipped", "none")]
    return "\n".join(parts) + "\n"


def _speedup_md(sp: dict[str, Any]) -> list[str]:
    su = sp["speedup"]
    plan = su["plan"]
    rows = []
    for r in su["rows"]:
        rows.append([r["workers"], spread(r["wall"]), f"{r['speedup']['median']:.2f} ({r['speedup']['min']:.2f}-"
                     f"{r['speedup']['max']:.2f})", f"{r['ideal']:.2f}", f"{r['efficiency']['median']:.2f}",
                     spread(r["overhead"])])
    d = sp["done_when"]
    out = [
        "", "## 1. Speedup", "",
        f"{plan['batches']} independent batches of {plan['seconds']:g} s ({plan['work']:g} s of agent work), "
        f"{su['reps']} repetition(s) per worker count, interleaved. Wall in seconds, median (min-max); speedup = "
        "serial wall / parallel wall; ideal = work / lower bound; efficiency = speedup / ideal; overhead = wall "
        "minus the agents' own time on the busiest stream.",
        "",
        _table(["workers", "wall s", "speedup", "ideal", "efficiency", "overhead s"], rows),
        "",
        f"Core issue's done-when: {d['plan']['batches']} x {d['plan']['seconds']:g} s: --workers 1 "
        f"{spread(d['serial_wall'])} s, --workers {d['workers']} {spread(d['parallel_wall'])} s: ratio "
        f"{d['ratio']['median']:.3f} (speedup {d['speedup']['median']:.2f}x).",
    ]
    if "target_probe" in sp:
        p = sp["target_probe"]
        out += ["", f"Target probe: {p['plan']['batches']} x {p['plan']['seconds']:g} s at {p['workers']} workers: "
                f"wall {p['wall']:.2f} s, ideal {p['ideal']:.1f}x, efficiency at least "
                f"{p['conservative_efficiency']:.3f} (serial taken as pure work)."]
    return out


def _scheduling_md(sc: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    pred = sc["predicted"]
    mid_size = {}
    for shape in {r["shape"] for r in pred}:
        sizes = sorted({r["batches"] for r in pred if r["shape"] == shape})
        mid_size[shape] = sizes[len(sizes) // 2]
    rows = [[r["shape"], r["batches"], r["workers"], f"{r['balanced']['ratio']:.3f}", f"{r['midpoint']['ratio']:.3f}",
             f"{r['round-robin']['ratio']:.3f}", f"{r['midpoint_over_balanced']:.2f}x",
             f"{r['balanced']['segment_ratio']:.3f}"]
            for r in pred if r["batches"] == mid_size[r["shape"]]]
    worst: dict[str, dict[str, float]] = {}
    for r in pred:
        w = worst.setdefault(r["shape"], {})
        for st in ("balanced", "midpoint", "round-robin"):
            w[st] = max(w.get(st, 0.0), r[st]["ratio"])
        w["segments"] = max(w.get("segments", 0.0), r["balanced"]["segment_ratio"])
    wrows = [[shape, *(f"{worst[shape][st]:.3f}" for st in ("balanced", "midpoint", "round-robin", "segments"))]
             for shape in worst]
    mrows = [[r["shape"], r["batches"], r["workers"], r["strategy"], r["streams"], f"{r['lower_bound_s']:.2f}",
              f"{r['predicted_ratio']:.3f}", spread(r["span_ratio"]), spread(r["wall_ratio"])]
             for r in sc["measured"]]
    return [
        "", "## 2. Scheduling quality", "",
        "Makespan / lower bound (1.0 is optimal), the lower bound being max(critical path, work / N) for N "
        "workers, also for the midpoint split, which uses two streams whatever N is.",
        "", "Predicted by the scheduler (pure), middle plan size of each shape:", "",
        _table(["shape", "batches", "N", "balanced", "midpoint", "round-robin", "midpoint / balanced",
                "balanced, segment hand-back"], rows),
        "", f"Worst ratio over every size ({', '.join(str(x) for x in cfg['sched_sizes'])} batches) and N "
        f"({', '.join(str(x) for x in cfg['sched_workers'])}):", "",
        _table(["shape", "balanced", "midpoint", "round-robin", "balanced, segment hand-back"], wrows),
        "", "*Segment hand-back*: the balanced schedule simulated the way the runtime carries it out today: a "
        "stream runs consecutive batches as one segment (cut only before a batch that waits for another stream) "
        "and hands results back when the whole segment ends, so a batch that another stream waits for is "
        "released only at the end of its segment. The gap to the *balanced* column is what the runtime loses "
        "against its own scheduler's plan, before any overhead.",
        "", "Measured with real runs (short sleeps): the agents' span (first agent start to last agent end) and "
        "the whole wall time, over the lower bound of the requested sleeps; median (min-max):", "",
        _table(["shape", "batches", "N", "strategy", "streams", "lower bound s", "predicted", "measured span",
                "measured wall"], mrows),
    ]


def _overhead_md(ov: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = []
    for r in ov["runs"]:
        ph = {p: r["phases"][p]["median"] for p in PHASES}
        k = r["streams"]
        rows.append([r["files"], k, spread(r["wall"]), spread(r["agents"]), spread(r["overhead"]),
                     f"{ph['planning'] + ph['preflight'] + ph['startup']:.3f}", f"{ph['code_transfer'] / k:.3f}",
                     f"{ph['agent_start'] / k:.3f}", f"{ph['commit_and_return'] / k:.3f}", f"{ph['merge']:.3f}",
                     f"{ph['cleanup']:.3f}"])
    gops = ov["git_operations"]
    names = list(dict.fromkeys(n for g in gops for n in g["operations"]))
    grows = [[n, *(spread(g["operations"].get(n, {})) for g in gops)] for n in names]
    builds = results.get("repo_build_seconds", {})
    return [
        "", "## 3. Overhead", "",
        "Batches that only start the fake agent (no sleep), one per stream. Seconds, median (min-max) where "
        "repeated. *Overhead* = wall - agents' own time on the busiest stream. Per-segment phases are shown as "
        "the mean per stream (they run in parallel); *merge* and *cleanup* run on the coordinator after the agents.",
        "",
        _table(["files", "streams", "wall", "agents", "overhead", "plan+preflight+startup", "code transfer / stream",
                "agent start / stream", "commit+return / stream", "merge", "cleanup"], rows),
        "", "What each phase covers:", "",
        *[f"- **{p}**: {PHASE_HELP[p]}" for p in PHASES],
        "", "Git operations timed one at a time through `distpar.gitops` (seconds):", "",
        _table(["operation", *(f"{g['files']} files" for g in gops)], grows),
        "", "Generating the repositories took " + ", ".join(f"{k}: {v:.1f} s" for k, v in builds.items()) + ".",
    ]


def _scale_md(sc: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[r["batches"], r["streams"], f"{r['plan_bytes'] / 1e3:.0f} kB", spread(r["parse"]),
             spread(r["schedule"]), spread(r["planning"]),
             "not traced" if r["planning_peak_mib"] is None else f"{r['planning_peak_mib']:.1f}",
             spread(r["registration"])]
            for r in sc["planning"]]
    j, m = sc["journal"], sc["memory"]
    mem = (f"error: {m['error'][:300]}" if "error" in m else
           f"{m['streams']} streams of {m['seconds']:g} s: coordinator peak RSS {m['peak_rss_mib'] / MB:.0f} MB "
           f"({m['baseline_rss_mib'] / MB:.0f} MB after imports), wall {m['wall']:.2f} s, overhead "
           f"{m['overhead']:.2f} s.")
    sj = results.get("journal", {})
    return [
        "", "## 4. Coordinator scale", "",
        "Mixed-DAG plans (setup, feature chains of about 4 batches with cross-feature dependencies, integration). "
        "Seconds; memory is the peak of Python allocations during parse + schedule (tracemalloc). *Registration* "
        "is what Runner.run does before the first dispatch (stream of each batch, plan and schedule JSON, journal "
        "rows).", "",
        _table(["batches", "streams", "plan text", "parse", "schedule", "planning", "peak MiB", "registration"],
               rows),
        "", f"Journal: {j['bytes_per_batch']:.0f} bytes per batch ({j['batches']} batches recorded as a run does; "
        f"{j['includes']})." + (f" This session's own journal: {sj['bytes'] / 1e3:.0f} kB for {sj['batches']} "
                                f"batches of real runs, {sj['bytes_per_batch']:.0f} bytes per batch (WAL included)."
                                if sj.get("batches") else ""),
        "", f"Coordinator memory: {mem}",
    ]


def _backends_md(be: dict[str, Any]) -> list[str]:
    plan = be["plan"]
    rows = []
    for name, b in be["backends"].items():
        if b.get("available"):
            rows.append([name, "yes", spread(b["wall"]), f"{b['over_local']:.2f}",
                         spread(b["efficiency_vs_lower_bound"]), ""])
        else:
            rows.append([name, "not available", "-", "-", "-", b["reason"]])
    out = [
        "", "## 5. Backends", "",
        f"{plan['batches']} x {plan['seconds']:g} s independent batches at {plan['workers']} workers. Wall in "
        "seconds; lower bound / wall is the fraction of the ideal reached. Ray ran on "
        f"{be.get('ray_cluster') or 'nothing (not available)'}; SSH on "
        f"{be.get('ssh_hosts') or 'nothing (no hosts)'}.", "",
        _table(["backend", "available", "wall", "wall / local", "lower bound / wall", "why not"], rows),
    ]
    rt = be.get("ray_target")
    if rt and "error" not in rt:
        out += ["", f"Ray target: {rt['batches']} x {rt['seconds']:g} s at {rt['workers']} workers: wall "
                f"{rt['wall']:.1f} s, ideal {rt['ideal']:.0f}x, efficiency at least "
                f"{rt['conservative_efficiency']:.3f}."]
    elif rt:
        out += ["", f"Ray target run failed: {rt['error']}"]
    return out
