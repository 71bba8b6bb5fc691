"""Issue 23's part of REPORT.md: the tail table, Ray against its floor and the repeat runs, with their targets."""

from __future__ import annotations

from typing import Any

from bench import repeat
from bench.stats import idle_between, min_median_max
from bench.tail import PART_HELP, PARTS

TAIL_TARGET = (300, 3.0)  # units, seconds from the last unit's end to the run's end
FLOOR_TARGET = 1.05


def _target(name: str, target: str, measured: str, ok: bool | None, margin: str, note: str) -> dict[str, Any]:
    status = "not measured" if ok is None else ("pass" if ok else "miss")
    return {"name": name, "target": target, "measured": measured, "status": status, "margin": margin, "note": note}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results.get("sections", {})
    out = []
    units, limit = TAIL_TARGET
    rows = [r for r in (s.get("tail") or {}).get("runs", []) if r["units"] == units]
    name, target = f"tail of {units} zero-second units (issue 23)", f"<= {limit:g} s from the last unit's end"
    if rows:
        worst = max(r["tail"] for r in rows)
        out.append(_target(name, target, f"{worst:.2f} s (worst of {len(rows)})", worst <= limit,
                           f"{(limit - worst) / limit * 100:+.0f}% headroom", f"load {rows[0]['loadavg'][0]}"))
    else:
        out.append(_target(name, target, "-", None, "-", "tail section not run"))
    fl = (s.get("backends") or {}).get("ray_floor")
    name, target = "Ray against the bare-Ray floor (issue 23)", f"<= {FLOOR_TARGET:g} x the floor"
    if fl and "error" not in fl:
        out.append(_target(name, target, f"{fl['ratio']:.3f} x ({fl['batches']} x {fl['seconds']:g} s, "
                           f"{fl['workers']} workers)", fl["ratio"] <= FLOOR_TARGET,
                           f"{(FLOOR_TARGET - fl['ratio']) / FLOOR_TARGET * 100:+.0f}% headroom",
                           "walls measured in turn in one session; " + fl["cluster"]))
    else:
        out.append(_target(name, target, "-", None, "-", (fl or {}).get("error", "not run in this profile")))
    out.extend(repeat.targets(s.get("repeat"), _target))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def tail_md(tail: dict[str, Any]) -> list[str]:
    rows = [[r["units"], r["workers"], r["loadavg"][0], f"{r['running']:.1f}", f"**{r['tail']:.2f}**",
             *[f"{r['parts'][p]:.2f}" for p in PARTS], f"{r['after_return']:.2f}",
             sum(v for k, v in r["git_processes"].items() if k in PARTS or k == "thread:distpar-cleanup")]
            for r in tail["runs"]]
    return ["", "## 7. The tail (issue 23)", "",
            "Zero-second independent units on the local backend (2-file repository): seconds from the last agent's "
            "exit to `Runner.run` returning (the report is printed then), split into parts; `after` is the "
            "background removal of the workspaces the process still waits for before it exits; `git` counts the "
            "git processes the tail's parts started.", "",
            _table(["units", "workers", "load", "running", "tail", *PARTS, "after", "git"], rows), "",
            *[f"- **{p}**: {PART_HELP[p]}" for p in PARTS]]


def floor_md(fl: dict[str, Any]) -> list[str]:
    if "error" in fl:
        return ["", f"Ray against its floor: failed: {fl['error']}"]
    rows = [[i + 1, p["loadavg"][0], f"{p['distpar']:.2f}", p["loadavg"][1], f"{p['floor']:.2f}", f"{p['ratio']:.3f}",
             _gap(p)] for i, p in enumerate(fl["pairs"])]
    return ["", f"Ray against its floor (bench/floor.py): {fl['batches']} x {fl['seconds']:g} s at {fl['workers']} "
            f"workers on {fl['cluster']}, distpar and the floor in turn: median walls {fl['distpar']['median']:.2f} s "
            f"and {fl['floor']['median']:.2f} s, **{fl['ratio']:.3f} x** (target {FLOOR_TARGET:g} x).", "",
            _table(["rep", "load before distpar", "distpar wall", "load before floor", "floor wall", "ratio",
                    "one agent's end to the next's start in a worker, median: distpar / floor"], rows)]


def _gap(pair: dict[str, Any]) -> str:
    """The median time a worker slot stood between two agents, in distpar's run (its journal's timeline) and in
    the floor's (which deals its units in advance: the least it can be)."""
    gaps = min_median_max(idle_between((w, s, e) for _uid, w, s, e in pair.get("distpar_run", {}).get("timeline", [])))
    floor = pair.get("floor_run", {}).get("gaps")
    if not gaps or not floor:
        return "-"
    return f"{gaps[1]:.2f} s / {floor[1]:.2f} s"
