"""Runs the benchmark sections of one profile in one session and writes results.json, REPORT.md and plots."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import backends, collisions, dispatch, overhead, repeat, scale, scheduling, speedup, tail, workspaces
from bench.backends import RemoteOptions
from bench.config import Config
from bench.harness import PHASE_HELP, Session
from bench.machine import describe

RESULTS_SCHEMA = 1
SECTIONS = ("speedup", "scheduling", "dispatch", "overhead", "scale", "backends", "tail", "collisions", "workspaces",
            "repeat")
PUBLISH_DIR = Path(__file__).resolve().parent / "results"


def run_suite(cfg: Config, out_dir: Path, *, sections: tuple[str, ...] = SECTIONS,
              remote: RemoteOptions | None = None, log: Callable[[str], None] | None = None,
              keep_scratch: bool = False) -> dict[str, Any]:
    remote = remote or RemoteOptions()
    out_dir = out_dir.resolve()  # DISTPAR_HOME and worktree paths must not depend on the working directory
    out_dir.mkdir(parents=True, exist_ok=True)
    # Scratch (repositories, journal, worktrees) under the output directory rather than a shared /tmp name.
    session = Session(out_dir / "scratch", log=log, keep=keep_scratch)
    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "profile": cfg.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": describe(),
        "config": _config_dict(cfg),
        "phases": PHASE_HELP,
        "note": "Ratios measured within this session; absolute times hold for this machine at this moment only "
                "and are never to be compared across sessions.",
        "sections": {},
    }
    t0 = time.perf_counter()
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "speedup": lambda: speedup.run(session, cfg),
        "scheduling": lambda: scheduling.run(session, cfg),
        "dispatch": lambda: dispatch.run(session, cfg),
        "overhead": lambda: overhead.run(session, cfg),
        "scale": lambda: scale.run(session, cfg),
        "backends": lambda: backends.run(session, cfg, remote),
        "tail": lambda: tail.run(session, cfg),
        "collisions": lambda: collisions.run(session, cfg),
        "workspaces": lambda: workspaces.run(session, cfg),
        "repeat": lambda: repeat.run(session, cfg),
    }
    try:
        with session.environment():
            for name in sections:
                session.log(f"bench: {name} ...")
                load = os.getloadavg()[0]
                ts = time.perf_counter()
                try:
                    data = runners[name]()
                except Exception as exc:  # keep the other sections; the report names the broken one
                    results.setdefault("section_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
                    session.log(f"bench: {name} failed: {exc}")
                    continue
                data["elapsed"] = round(time.perf_counter() - ts, 2)
                data["loadavg"] = [round(load, 2), round(os.getloadavg()[0], 2)]
                results["sections"][name] = data
            results["repo_build_seconds"] = {k: round(v, 3) for k, v in session.repo_build_seconds.items()}
            jb, n = session.journal_bytes(), session.batches_run
            results["journal"] = {"bytes": jb, "batches": n, "bytes_per_batch": round(jb / n, 1) if n else None,
                                  "note": "the session's own journal (WAL included) over every batch it ran"}
            results["failed_runs"] = session.failures
    finally:
        session.close()
    results["elapsed"] = round(time.perf_counter() - t0, 2)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_outputs(results, out_dir, log=session.log)
    return results


def write_outputs(results: dict[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> None:
    from bench import plots, report

    results["targets"] = report.targets(results)
    try:
        results["plots"] = [p.name for p in plots.draw(results, out_dir)]
    except ImportError as exc:  # matplotlib is in the `bench` extra
        results["plots"] = []
        results["plots_skipped"] = f"{exc} (pip install -e '.[bench]')"
        log(f"bench: plots skipped: {results['plots_skipped']}")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "REPORT.md").write_text(report.render(results))


def publish(out_dir: Path, dest: Path = PUBLISH_DIR) -> list[Path]:
    """Copy the report, the JSON and the plots (no scratch data) to ``bench/results/``."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in [out_dir / "results.json", out_dir / "REPORT.md", *sorted(out_dir.glob("*.png"))]:
        if p.exists():
            shutil.copy2(p, dest / p.name)
            copied.append(dest / p.name)
    return copied


def _config_dict(cfg: Config) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(cfg)
    d["overhead_runs"] = {str(k): list(v) for k, v in cfg.overhead_runs.items()}
    return d
