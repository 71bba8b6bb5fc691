"""The issue's targets checked against one session's results, and REPORT.md.

Every target gets a status (pass, miss, not measured), the measured value, the margin (by how much it passes
or misses) and a note on what was measured and, for a miss, why (from the measured phases where possible).
"""

from __future__ import annotations

from typing import Any

from bench import collisions, repeat, report23
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
    out.extend(_scheduling_targets(s.get("scheduling"), results.get("config", {}).get("measured_unit")))
    out.extend(_dispatch_targets(s.get("dispatch")))
    out.append(_overhead_target(s.get("overhead")))
    out.extend(_scale_targets(s.get("scale")))
    out.append(_ray_target(s.get("backends")))
    out.extend(_backend_targets(s.get("backends")))
    out.extend(_workspace_targets(s.get("workspaces")))
    out.extend(report23.targets(results))
    return out


def _workspace_targets(ws: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for files in (1000, 20000):
        name, target = f"workspace preparation, {files:,}-file repo (issue 21)", "own repository <= 1.2 x worktree"
        row = next((r for r in (ws or {}).get("rows", []) if r["files"] == files), None)
        if row is None:
            out.append(_missing(name, target, "workspaces section not run"))
            continue
        ratio, p = row["ratio"]["own repository"], row["prepare"]
        measured = (f"{ratio:.2f} x ({p['own repository']['median']:.3f} s vs {p['worktree']['median']:.3f} s, "
                    f"median of {p['worktree']['n']})")
        out.append(_target(name, target, measured, ratio <= row["target"], _pct(ratio, row["target"], False),
                           f"one session, ways alternated; load {row['loadavg'][0]:.1f} -> {row['loadavg'][1]:.1f}"))
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
        ph, k, n = run["phases"], run["used_workers"], run["batches"]
        note += (f"; why (one run): wall {run['wall']:.1f} s against a lower bound of "
                 f"{run['predicted']['lower_bound']:.0f} s; workspace and start {ph['prepare'] / n:.2f} s per unit "
                 f"({k} workers at once), agent start {ph['agent_start'] / n:.2f} s and commit "
                 f"{ph['commit_and_return'] / n:.2f} s per unit, merge {ph['merge']:.2f} s, cleanup "
                 f"{ph['cleanup']:.2f} s; load average {run['loadavg']:.1f} on {k} workers and 2 cores")
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


MEASURED_UNIT = 0.5  # the full profile's mixed-DAG unit (batches of 0.18-0.69 s): the issue-11 target's plan


def _scheduling_targets(sc: dict[str, Any] | None, unit: float | None = MEASURED_UNIT) -> list[dict[str, Any]]:
    n1, t1 = "mixed DAG, default strategy (predicted)", "makespan <= 1.1 x lower bound"
    n2, t2 = "mixed DAG and chains, default vs midpoint split (predicted, N >= 4)", "midpoint / balanced >= 1.5"
    n3, t3 = "issue 11: mixed DAG, run-time dispatch (measured run)", "agents' span <= 1.3 x lower bound"
    n4, t4 = "mixed DAG, default vs midpoint split (measured run)", "midpoint / balanced >= 1.5"
    if not sc:
        return [_missing(n, t, "scheduling section not run") for n, t in ((n1, t1), (n2, t2), (n3, t3), (n4, t4))]
    pred = sc["predicted"]
    mixed = [r for r in pred if r["shape"] == "mixed-dag"]
    worst = max(mixed, key=lambda r: r["balanced"]["ratio"])
    w = worst["balanced"]["ratio"]
    over = [r for r in mixed if r["balanced"]["ratio"] > 1.1]
    note1 = (f"the static scheduler's prediction (distpar plan / --dry-run); worst of {len(mixed)} (size, N) "
             f"cases: {worst['batches']} batches at N={worst['workers']}; the executor's run-time dispatch, "
             f"simulated on the run state, gives at worst {max(r['balanced']['dispatch_ratio'] for r in mixed):.2f}")
    if over:
        note1 += "; over 1.1 at " + ", ".join(f"{r['batches']}b/N={r['workers']} ({r['balanced']['ratio']:.2f})"
                                             for r in over)
        note1 += ("; why: the balanced strategy is a list-scheduling heuristic, guaranteed only within work/N + "
                  "(1 - 1/N) x critical path (Graham), not within 1.1 x max(critical path, work/N); the misses are "
                  "where workers idle behind cross-worker waits. The lower bound itself may be unreachable there, "
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
    req = bal["span_ratio"]["median"]
    act = bal.get("actual_span_ratio") or bal["span_ratio"]
    span = act["median"]
    note3 = (f"{bal['batches']} batches of {bal['batch_seconds'][0]:.2f}-{bal['batch_seconds'][1]:.2f} s, "
             f"N={bal['workers']}, {act['n']} run(s): agents' span (first start to last end) over the lower bound "
             f"of the durations the agents really took (critical path and work / N, each agent's own start-up "
             f"included: no scheduler can remove it); over the bound of the requested sleeps alone (the measure "
             f"that was 1.77 before run-time dispatch) {req:.3f}; the run state alone (simulated, no overhead) "
             f"gives {bal.get('dispatch_ratio', 0):.2f}; whole wall time over the sleeps' bound "
             f"{bal['wall_ratio']['median']:.2f}")
    if span > 1.3:
        ph, nb = bal["runs"][0]["phases"], bal["batches"]
        per_unit = (ph["prepare"] + ph["commit_and_return"] + ph["dispatch"]) / nb
        note3 += ("; why: every unit on the critical path adds its workspace move, its commit and the dispatch of "
                  f"the next one ({per_unit:.2f} s per unit in the first run)")
    scaled = unit is not None and unit != MEASURED_UNIT
    if scaled:
        note3 = (f"scaled plan in this profile (units of {unit:g} s; the target applies to the full profile's "
                 f"{MEASURED_UNIT:g} s): " + note3)
    out.append(_target(n3, t3, f"{span:.3f} (range {act['min']:.2f}-{act['max']:.2f})",
                       None if scaled else span <= 1.3, "-" if scaled else _pct(span, 1.3, False), note3))
    v = mid["span_ratio"]["median"] / bal["span_ratio"]["median"]
    predicted_v = mid["predicted_ratio"] / bal["predicted_ratio"]
    out.append(_target(n4, t4, f"{v:.2f}x", None, "-",
                       f"not comparable, so not judged: agents' span, midpoint (the seed's two pinned halves) over "
                       f"balanced (dispatched at run time); midpoint runs as the seed did, each half in plan order "
                       f"without waiting for a depends_on in the other half, so it does less waiting than the plan "
                       f"asks; the scheduler, honouring every dependency, predicted {predicted_v:.2f}x"))
    return out


SPREAD_PLAN = (16, 1.0, 12.0, 4)  # issue 11's plan: 16 batches of 1-12 s on 4 workers
SPREAD_TARGETS = {"none": 1.35, "wrong": 1.35, "exact": 1.1}
CAST_TARGET = 1.35  # "about 6 s rather than 14 s": our reading, the same slack as the spread plan's


def _dispatch_targets(d: dict[str, Any] | None) -> list[dict[str, Any]]:
    names = {
        "none": "issue 11: 16 batches of 1-12 s, no estimates, --workers 4",
        "wrong": "issue 11: the same, estimates unrelated to the durations",
        "exact": "issue 11: the same, exact estimates",
    }
    cast_name = "issue 15: CAST plan, 4 stages (3 x 3 s, then 1 s, then 2 x 2 s, then 1 s), no depends_on"
    cast_t = (f"wall <= {CAST_TARGET} x the sum of each stage's longest agent (7 s here, not the 15 s of all "
              "agents)")
    if not d:
        return [_missing(names[m], f"wall <= {SPREAD_TARGETS[m]} x bound", "dispatch section not run")
                for m in names] + [_missing(cast_name, cast_t, "dispatch section not run")]
    out = []
    sp = d["spread"]
    plan = sp["plan"]
    issue_plan = (plan["batches"], plan["shortest"], plan["longest"], plan["workers"]) == SPREAD_PLAN
    rows = {r["estimates"]: r for r in sp["rows"]}
    for mode, name in names.items():
        limit = SPREAD_TARGETS[mode]
        t = f"wall <= {limit} x max(longest, work / 4)"
        r = rows.get(mode)
        if r is None:
            out.append(_missing(name, t, "this profile does not run it"))
            continue
        req = r["wall_ratio"]
        v = r.get("actual_wall_ratio") or req
        measured = f"{v['median']:.3f}" + (f" (range {v['min']:.3f}-{v['max']:.3f})" if v["n"] > 1 else "")
        note = (f"{v['n']} run(s), each its own ratio: wall (plan + preflight + run + merge) over max(longest, "
                f"work / {plan['workers']}) of the durations the agents really took (their start-up included); over "
                f"the bound of the requested sleeps ({plan['lower_bound']:.1f} s; {plan['batches']} batches of "
                f"{plan['shortest']:g}-{plan['longest']:g} s) {req['median']:.3f}; agents' span over it "
                f"{r['span_ratio']['median']:.3f}; "
                f"the run state alone (no overhead) {r['dispatch_ratio']:.3f}; the static lanes of before would "
                f"give {r['static_ratio']:.3f}")
        if r.get("correlation") is not None:
            note += f"; rank correlation of the estimates with the durations {r['correlation']:+.2f}"
        if not issue_plan:
            out.append(_target(name, t, measured, None, "-", "scaled plan in this profile (the target applies to "
                                                              "the full profile's 16 x 1-12 s): " + note))
            continue
        out.append(_target(name, t, measured, v["median"] <= limit, _pct(v["median"], limit, False), note))

    c = d["cast_stages"]
    v = c["wall_ratio"]
    checks = c["checks"]
    ok_work = all(x["found_previous_work"] and x["stages_in_order"] for x in checks)
    measured = (f"{v['median']:.3f} x ({c['wall']['median']:.2f} s against {c['stage_bound']:g} s; all agents "
                f"{c['all_agents']:g} s)")
    note = (f"ran as: {c['form']}; {v['n']} run(s); every stage found the previous stages' work (read from each "
            f"unit's commit) and started after them: {'yes' if ok_work else 'NO'}" + "".join(
                f"; {n}" for n in c["notes"]))
    scaled = [list(x) for x in c["stages"]] != [[3.0, 3.0, 3.0], [1.0], [2.0, 2.0], [1.0]]
    if scaled or c["form"] != "CAST plan (unit graph)":
        why = ("scaled stages in this profile; " if scaled else "") + (
            "the CAST plan itself did not run (see the note): measured on its explicit form; " if
            c["form"] != "CAST plan (unit graph)" else "")
        out.append(_target(cast_name, cast_t, measured, None if scaled else (v["median"] <= CAST_TARGET and ok_work),
                           "-" if scaled else _pct(v["median"], CAST_TARGET, False), why + note))
    else:
        out.append(_target(cast_name, cast_t, measured, v["median"] <= CAST_TARGET and ok_work,
                           _pct(v["median"], CAST_TARGET, False), note))
    return out


def _backend_targets(be: dict[str, Any] | None) -> list[dict[str, Any]]:
    n1, t1 = "issue 11: Ray, 16 x 2 s on 8 workers (start-up included) vs local --workers 1", "speedup >= 3.5x"
    n2, t2 = "issue 11: SSH, 12 x 3 s over 2 loopback hosts x 3 slots", "speedup >= 4x"
    if not be:
        return [_missing(n1, t1, "backends section not run"), _missing(n2, t2, "backends section not run")]
    out = []
    rs, st = be.get("ray_speedup"), be.get("ssh_target")
    if not rs or "error" in rs:
        out.append(_missing(n1, t1, f"run failed: {rs['error'][:200]}" if rs else "runs in the full profile only"))
    else:
        v = rs["speedup"]
        out.append(_target(n1, t1, f"{v:.2f}x (Ray {rs['wall']:.1f} s, local serial {rs['serial_wall']:.1f} s)",
                           v >= 3.5, _pct(v, 3.5, True),
                           "one run each; Ray " + ("started by the backend for the run" if rs["startup_included"]
                                                   else "already running at --ray-address (start-up not included)")))
    if not st or "error" in st:
        out.append(_missing(n2, t2, f"run failed: {st['error'][:200]}" if st else "runs in the full profile only"))
    else:
        v = st["conservative_speedup"]
        out.append(_target(n2, t2, f">= {v:.2f}x (wall {st['wall']:.1f} s)", v >= 4.0, _pct(v, 4.0, True),
                           f"one run on {st['hosts']} host(s), {st['workers']} workers spread evenly; serial time "
                           f"taken as the plan's pure work ({st['batches'] * st['seconds']:g} s), so the real speedup "
                           f"is at least this; {be.get('ssh_hosts') or ''}"))
    return out


def _overhead_target(ov: dict[str, Any] | None) -> dict[str, Any]:
    name, target = "coordinator overhead, 1,000-file repo", "<= 1 s + 0.1 s per worker"
    rows = [r for r in (ov or {}).get("runs", []) if r["files"] == 1000]
    if not rows:
        return _missing(name, target, "no runs on a 1,000-file repository in this profile")
    parts, worst, ok = [], None, True
    for r in rows:
        limit = 1 + 0.1 * r["workers"]
        v = r["overhead"]["median"]
        parts.append(f"{r['workers']} workers: {v:.2f} s (limit {limit:.1f})")
        ok = ok and v <= limit
        if worst is None or v / limit > worst[0]:
            worst = (v / limit, r)
    assert worst is not None
    ratio, wr = worst
    note = ("wall time minus the agents' own time on the busiest worker (batches that only start the fake agent, "
            "one per worker); worst at " + f"{wr['workers']} workers")
    if not ok:
        ph = {p: wr["phases"][p]["median"] for p in ("prepare", "commit_and_return", "merge", "cleanup",
                                                   "startup", "planning", "preflight")}
        k = wr["workers"]
        per_unit = {"prepare", "commit_and_return"}
        big = sorted(ph.items(), key=lambda kv: -(kv[1] / k if kv[0] in per_unit else kv[1]))[:2]
        note += "; largest parts: " + ", ".join(
            f"{p} {v / k:.2f} s per unit, {k} in parallel" if p in per_unit else f"{p} {v:.2f} s (sequential)"
            for p, v in big)
        note += f"; load average {wr['runs'][0]['loadavg']:.1f}"
    margin = f"worst {ratio:.2f} x the limit" + ("" if ok else f" ({(ratio - 1) * 100:.0f}% over)")
    return _target(name, target, "; ".join(parts), ok, margin, note)


def _scale_targets(sc: dict[str, Any] | None) -> list[dict[str, Any]]:
    n1, t1 = "planning 10,000 batches (parse + schedule)", "< 1 s"
    n2, t2 = "coordinator memory at 64 workers", "< 200 MB"
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
                           f"by whatever else the machine runs); registering it as the executor's Runner does "
                           f"(units with priorities, journal rows) takes another "
                           + (f"{r['registration']['min']:.2f} s" if r["registration"]["n"] else
                              "(not timed in this profile)") + " (not part of the target)"))
    else:
        out.append(_missing(n1, t1, "this profile plans no 10,000-batch plan"))
    m = sc["memory"]
    if "error" in m:
        out.append(_missing(n2, t2, f"probe failed: {m['error'][:200]}"))
    elif m["workers"] < 64:
        out.append(_missing(n2, t2, f"this profile probes {m['workers']} workers"))
    else:
        mb = m["peak_rss_mib"] / MB
        out.append(_target(n2, t2, f"{mb:.0f} MB peak RSS", mb < 200, _pct(mb, 200, False),
                           f"coordinator process alone (agents not counted), {m['workers']} workers of "
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
        ph, k, n = run["phases"], run["used_workers"], run["batches"]
        note += (f"; why: wall {run['wall']:.1f} s against a lower bound of {run['predicted']['lower_bound']:.0f} s; "
                 f"submit to agent start {ph['prepare'] / n:.1f} s per unit (Ray task start, code transfer; {k} "
                 f"workers on this machine), agent start {ph['agent_start'] / n:.2f} s per unit; load average "
                 f"{run['loadavg']:.1f}")
    return _target(name, target, f">= {v:.3f}", v >= 0.8, _pct(v, 0.8, True), note)


# --- REPORT.md -------------------------------------------------------------------------------------------


def _workspaces_md(ws: dict[str, Any]) -> list[str]:
    from bench.workspaces import WAYS

    rows = []
    for r in ws["rows"]:
        for way in WAYS:
            rows.append([f"{r['files']:,}", way, spread(r["prepare"][way]), f"{r['ratio'][way]:.2f}",
                         spread(r["remove"][way]), spread(r["fetch_back"]) if way == "own repository" else "-",
                         f"{r['loadavg'][0]:.1f} -> {r['loadavg'][1]:.1f}"])
    return [
        "", "## Workspaces: a worktree vs a repository of its own (issue 21)", "",
        "Preparing a local worker's workspace from nothing to a checked-out branch, each way timed alone in one "
        "session on the same repository, the ways alternated (seconds; ratio = median / the worktree's):", "",
        _table(["files", "way", "prepare", "ratio", "remove", "fetch back / unit", "load"], rows),
    ]


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
    if "dispatch" in s:
        parts += _dispatch_md(s["dispatch"])
    if "overhead" in s:
        parts += _overhead_md(s["overhead"], results)
    if "scale" in s:
        parts += _scale_md(s["scale"], results)
    if "backends" in s:
        parts += _backends_md(s["backends"])
        parts += report23.floor_md(s["backends"]["ray_floor"]) if "ray_floor" in s["backends"] else []
    if "tail" in s:
        parts += report23.tail_md(s["tail"])
    if "collisions" in s:
        parts += collisions.markdown(s["collisions"], _table)
    if "workspaces" in s:
        parts += _workspaces_md(s["workspaces"])
    if "repeat" in s:
        parts += repeat.markdown(s["repeat"], _table)
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
        "minus the agents' own time on the busiest worker.",
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
             f"{r['balanced']['dispatch_ratio']:.3f}"]
            for r in pred if r["batches"] == mid_size[r["shape"]]]
    worst: dict[str, dict[str, float]] = {}
    for r in pred:
        w = worst.setdefault(r["shape"], {})
        for st in ("balanced", "midpoint", "round-robin"):
            w[st] = max(w.get(st, 0.0), r[st]["ratio"])
        w["dispatch"] = max(w.get("dispatch", 0.0), r["balanced"]["dispatch_ratio"])
    wrows = [[shape, *(f"{worst[shape][st]:.3f}" for st in ("balanced", "midpoint", "round-robin", "dispatch"))]
             for shape in worst]
    mrows = [[r["shape"], r["batches"], r["workers"], r["strategy"], r["used_workers"], f"{r['lower_bound_s']:.2f}",
              f"{r['predicted_ratio']:.3f}", f"{r['dispatch_ratio']:.3f}", spread(r["span_ratio"]),
              spread(r["wall_ratio"])]
             for r in sc["measured"]]
    return [
        "", "## 2. Scheduling quality", "",
        "Makespan / lower bound (1.0 is optimal), the lower bound being max(critical path, work / N) for N "
        "workers, also for the midpoint split, which uses two workers whatever N is. *balanced* is the default: "
        "the static schedule predicts it, and the executor dispatches it at run time (a free worker takes the best "
        "ready unit); *midpoint* and *round-robin* stay pinned to their workers.",
        "", "Predicted by the scheduler (pure), middle plan size of each shape:", "",
        _table(["shape", "batches", "N", "balanced", "midpoint", "round-robin", "midpoint / balanced",
                "balanced, run-time dispatch"], rows),
        "", f"Worst ratio over every size ({', '.join(str(x) for x in cfg['sched_sizes'])} batches) and N "
        f"({', '.join(str(x) for x in cfg['sched_workers'])}):", "",
        _table(["shape", "balanced", "midpoint", "round-robin", "balanced, run-time dispatch"], wrows),
        "", "*Run-time dispatch*: the executor's units fed through the real run state (`distpar.core.state.RunState`) "
        "on a simulated clock, each unit taking its estimate, no overhead (`bench/simulate.py`): what the "
        "coordinator's decisions alone give. Where it is above *balanced*, the static plan, which sees every "
        "duration in advance, would have done better; where it is below, dispatching at run time did.",
        "", "Measured with real runs (short sleeps): the agents' span (first agent start to last agent end) and "
        "the whole wall time, over the lower bound of the requested sleeps; median (min-max):", "",
        _table(["shape", "batches", "N", "strategy", "workers used", "lower bound s", "predicted (static)",
                "run state alone", "measured span", "measured wall"], mrows),
    ]


def _dispatch_md(d: dict[str, Any]) -> list[str]:
    sp, c = d["spread"], d["cast_stages"]
    plan = sp["plan"]
    rows = [[r["estimates"], "-" if r["correlation"] is None else f"{r['correlation']:+.2f}", spread(r["wall_ratio"]),
             spread(r["span_ratio"]), f"{r['dispatch_ratio']:.3f}", f"{r['static_ratio']:.3f}"]
            for r in sp["rows"]]
    crow = [[i + 1, f"{run['wall']:.2f}", f"{run['wall'] / c['stage_bound']:.3f}",
             "yes" if ch["found_previous_work"] else "NO: " + "; ".join(ch["missing"])[:200],
             "yes" if ch["stages_in_order"] else "NO",
             ", ".join(f"{k}: {v[0]:.2f}-{v[1]:.2f}" for k, v in ch["stage_spans"].items())]
            for i, (run, ch) in enumerate(zip(c["runs"], c["checks"], strict=True))]
    return [
        "", "## 2b. Run-time dispatch", "",
        f"{plan['batches']} independent batches of {plan['shortest']:g}-{plan['longest']:g} s (seeded, "
        f"{plan['work']:g} s of work) on {plan['workers']} local workers; lower bound max(longest, work / "
        f"{plan['workers']}) = {plan['lower_bound']:g} s. Each ratio is from one run ({sp['reps']} run(s) per row, "
        "median (min-max)). *Run state alone*: the same plan through the real run state on a simulated clock, no "
        "overhead; *static lanes*: the plan frozen into the static scheduler's lanes before the run, as "
        "distpar did before run-time dispatch, with the same real durations.", "",
        _table(["estimates", "rank correlation with durations", "wall / bound", "agents' span / bound",
                "run state alone", "static lanes"], rows),
        "", f"CAST stages {' | '.join(' + '.join(f'{x:g}' for x in st) for st in c['stages'])} s on {c['workers']} "
        f"workers, run as **{c['form']}**: the sum of each stage's longest agent is {c['stage_bound']:g} s, all "
        f"agents together {c['all_agents']:g} s." + "".join(f" {n[:1].upper()}{n[1:]}." for n in c["notes"]), "",
        _table(["run", "wall s", "wall / stage bound", "every unit has the earlier stages' work",
                "stages in order", "stage spans (s from the start)"], crow),
    ]


def _overhead_md(ov: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = []
    for r in ov["runs"]:
        ph = {p: r["phases"][p]["median"] for p in PHASES}
        k = r["workers"]
        rows.append([r["files"], k, spread(r["wall"]), spread(r["agents"]), spread(r["overhead"]),
                     f"{ph['planning'] + ph['preflight'] + ph['startup']:.3f}", f"{ph['prepare'] / k:.3f}",
                     f"{ph['agent_start'] / k:.3f}", f"{ph['commit_and_return'] / k:.3f}", f"{ph['merge']:.3f}",
                     f"{ph['cleanup']:.3f}"])
    gops = ov["git_operations"]
    names = list(dict.fromkeys(n for g in gops for n in g["operations"]))
    grows = [[n, *(spread(g["operations"].get(n, {})) for g in gops)] for n in names]
    builds = results.get("repo_build_seconds", {})
    return [
        "", "## 3. Overhead", "",
        "Batches that only start the fake agent (no sleep), one unit per worker. Seconds, median (min-max) where "
        "repeated. *Overhead* = wall - agents' own time on the busiest worker. Per-unit phases are shown as the "
        "mean per unit (they run in parallel); *merge* and *cleanup* run on the coordinator after the agents.",
        "",
        _table(["files", "workers", "wall", "agents", "overhead", "plan+preflight+startup", "prepare / unit",
                "agent start / unit", "commit+return / unit", "merge", "cleanup"], rows),
        "", "What each phase covers:", "",
        *[f"- **{p}**: {PHASE_HELP[p]}" for p in PHASES],
        "", "Git operations timed one at a time through `distpar.infra.gitops` (seconds):", "",
        _table(["operation", *(f"{g['files']} files" for g in gops)], grows),
        "", "Generating the repositories took " + ", ".join(f"{k}: {v:.1f} s" for k, v in builds.items()) + ".",
    ]


def _scale_md(sc: dict[str, Any], results: dict[str, Any]) -> list[str]:
    rows = [[r["batches"], r["workers"], f"{r['plan_bytes'] / 1e3:.0f} kB", spread(r["parse"]),
             spread(r["schedule"]), spread(r["planning"]),
             "not traced" if r["planning_peak_mib"] is None else f"{r['planning_peak_mib']:.1f}",
             spread(r["registration"])]
            for r in sc["planning"]]
    j, m = sc["journal"], sc["memory"]
    mem = (f"error: {m['error'][:300]}" if "error" in m else
           f"{m['workers']} workers of {m['seconds']:g} s: coordinator peak RSS {m['peak_rss_mib'] / MB:.0f} MB "
           f"({m['baseline_rss_mib'] / MB:.0f} MB after imports), wall {m['wall']:.2f} s, overhead "
           f"{m['overhead']:.2f} s.")
    sj = results.get("journal", {})
    return [
        "", "## 4. Coordinator scale", "",
        "Mixed-DAG plans (setup, feature chains of about 4 batches with cross-feature dependencies, integration). "
        "Seconds; memory is the peak of Python allocations during parse + schedule (tracemalloc). *Registration* "
        "is what the executor's Runner does before the first dispatch (the units and their critical-path "
        "priorities, plan and schedule JSON, journal rows).", "",
        _table(["batches", "workers", "plan text", "parse", "schedule", "planning", "peak MiB", "registration"],
               rows),
        "", "The run state's decisions (`distpar.core.state.RunState`, pure) on the same plans: building the units "
        "and the state, the first dispatch to every worker, then the time of one `handle` per unit that ends "
        "(it decides what starts next), milliseconds, median (min-max):", "",
        _table(["units", "workers", "units + state s", "first dispatch s", "per event ms"],
               [[r["units"], r["workers"], r["units_and_state_s"], r["first_dispatch_s"], spread(r["per_event_ms"])]
                for r in sc.get("run_state", [])]),
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
    rs, st = be.get("ray_speedup"), be.get("ssh_target")
    if rs:
        out += ["", f"Ray speedup: {rs['batches']} x {rs['seconds']:g} s: local --workers 1 {rs['serial_wall']:.1f} s, "
                f"Ray --workers {rs['workers']} {rs['wall']:.1f} s: {rs['speedup']:.2f}x." if "error" not in rs else
                f"Ray speedup run failed: {rs['error']}"]
    if st:
        out += ["", f"SSH target: {st['batches']} x {st['seconds']:g} s on {st['workers']} workers over {st['hosts']} "
                f"host(s): wall {st['wall']:.1f} s, at least {st['conservative_speedup']:.2f}x the serial time."
                if "error" not in st else f"SSH target run failed: {st['error']}"]
    rt = be.get("ray_target")
    if rt and "error" not in rt:
        out += ["", f"Ray target: {rt['batches']} x {rt['seconds']:g} s at {rt['workers']} workers: wall "
                f"{rt['wall']:.1f} s, ideal {rt['ideal']:.0f}x, efficiency at least "
                f"{rt['conservative_efficiency']:.3f}."]
    elif rt:
        out += ["", f"Ray target run failed: {rt['error']}"]
    return out
