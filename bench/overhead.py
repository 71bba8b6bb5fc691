"""3. Overhead: where the time goes that is not the agents' own, and how it grows with workers and repo size.

Two views that check each other:

* *Runs*: plans of W batches that only start the fake agent (no sleep) on W workers (one unit each), on
  repositories of 2, 1,000 and 20,000 files. Each run is split into phases from its journal events and the
  agents' process start/end times (``harness.phases``). The coordinator overhead of a run is its wall time
  minus the agents' own time on the busiest worker.
* *Git operations*, timed directly through ``distpar.infra.gitops``, one at a time on an idle coordinator: the
  steps the phases are made of (worktree add/remove, commit, snapshot, merge, bundle and clone for remote
  workers, status for the preflight).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.harness import PHASES, Session
from bench.plans import make_shape
from bench.stats import summary
from distpar.infra import gitops
from distpar.testing.builders import IDENTITY


def runs(session: Session, cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for files, worker_counts in cfg.overhead_runs.items():
        session.repo(files)
        for w in worker_counts:
            nodes = make_shape("independent-equal", w, 0.0)
            recs = []
            for rep in range(cfg.light_reps):
                session.log(f"  overhead: {files}-file repo, {w} worker(s), rep {rep + 1}")
                recs.append(session.run(f"overhead-{files}-w{w}", nodes, w, files=files))
            rows.append({
                "files": files,
                "workers": w,
                "wall": summary([r.wall for r in recs]),
                "overhead": summary([r.overhead for r in recs]),
                "agents": summary([r.busiest_worker_agent for r in recs]),
                "phases": {p: summary([r.phases[p] for r in recs]) for p in PHASES},
                "runs": [r.to_dict() for r in recs],
            })
    return rows


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def git_operations(session: Session, cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for files in cfg.gitops_repos:
        repo = session.repo(files)
        session.log(f"  git operations on the {files}-file repo")
        remote = cfg.gitops_remote_max_files is None or files <= cfg.gitops_remote_max_files
        times: dict[str, list[float]] = {}
        for rep in range(cfg.light_reps):
            for name, seconds in _time_operations(repo, session.root / f"gitops-{files}-{rep}", rep, remote):
                times.setdefault(name, []).append(seconds)
        rows.append({"files": files, "operations": {k: summary(v) for k, v in times.items()}})
    return rows


def _time_operations(repo: Path, scratch: Path, rep: int, remote: bool) -> list[tuple[str, float]]:
    """One pass over the git steps of a run, each timed alone, in the order a run does them."""
    env = dict(IDENTITY)
    ws, clone, bundle = scratch / "wt", scratch / "clone", scratch / "base.bundle"
    scratch.mkdir(parents=True, exist_ok=True)
    base = gitops.rev(repo, "HEAD")
    branch = f"bench/gitops-{rep}"

    def commit_one() -> None:
        ws.joinpath("bench-one.txt").write_text(str(rep))
        gitops.commit_all(ws, "bench", env)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("status (preflight)", lambda: gitops.dirty_files(repo)),
        ("worktree add", lambda: gitops.worktree_add(repo, ws, branch, base)),
        ("commit one file", commit_one),
        ("snapshot (cleanup)", lambda: gitops.snapshot(ws, "bench", env)),
        ("merge-tree merge", lambda: gitops.merge_commit(repo, base, gitops.rev(ws, "HEAD"), "m", env)),
        ("worktree remove", lambda: gitops.worktree_remove(repo, ws)),
    ]
    if remote:
        steps += [
            ("bundle create (remote: code out)",
             lambda: gitops.bundle_create(repo, bundle, [base, "refs/heads/" + branch])),
            ("clone from bundle (remote worker)", lambda: _clone(clone, bundle, branch)),
            ("bundle back + fetch (remote: return)", lambda: _return(repo, clone, scratch, branch, base, env)),
        ]
    try:
        return [(name, _timed(fn)) for name, fn in steps]
    finally:
        gitops.worktree_remove(repo, ws)
        gitops.git(repo, "branch", "-D", "--quiet", branch, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def _clone(dest: Path, bundle: Path, branch: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    gitops.git(dest, "init", "--quiet")
    gitops.fetch(dest, bundle, ["+refs/*:refs/bench-in/*"])
    gitops.git(dest, "checkout", "--quiet", "-B", branch, f"refs/bench-in/heads/{branch}")


def _return(repo: Path, clone: Path, scratch: Path, branch: str, base: str, env: dict[str, str]) -> None:
    clone.joinpath("bench-two.txt").write_text("two\n")
    gitops.commit_all(clone, "bench return", env)
    back = scratch / "back.bundle"
    gitops.bundle_create(clone, back, [branch, f"^{base}"])
    gitops.fetch(repo, back, [f"+refs/heads/{branch}:refs/heads/{branch}-back"])
    gitops.git(repo, "branch", "-D", "--quiet", f"{branch}-back", check=False)


def run(session: Session, cfg: Config) -> dict[str, Any]:
    return {
        "runs": runs(session, cfg),
        "git_operations": git_operations(session, cfg),
    }
