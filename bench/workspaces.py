"""6. Workspaces (issue 21): what preparing a local worker's workspace costs, the old way and the new one, side
by side in one session on the same repositories (1,000 and 20,000 files), alternating so that load changes
touch both alike.

* ``worktree`` (before issue 21): a linked worktree of the user's repository (``git worktree add
  --no-checkout`` under the repository's lock, then ``git reset --hard``).
* ``own repository`` (now): ``gitops.own_repository``: ``git init``, the user's object store borrowed through
  ``objects/info/alternates``, copies of its branches and tags, the checkout.
* ``clone --shared`` (the alternative measured): ``git clone --shared --no-checkout``, its ``origin`` removed,
  the checkout.

Each is timed from nothing to a checked-out workspace, then its removal; the ratio new/old is the target
(<= 1.2). The fetch of a unit's branch back (what the new way adds per unit) is timed too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.harness import Session
from bench.stats import summary
from distpar.infra import gitops
from distpar.testing.builders import IDENTITY

WAYS = ("worktree", "own repository", "clone --shared")
TARGET = 1.2


def _worktree(repo: Path, ws: Path, branch: str, base: str) -> None:
    gitops.worktree_add(repo, ws, branch, base)


def _own(repo: Path, ws: Path, branch: str, base: str) -> None:
    gitops.own_repository(repo, ws, branch, base)


def _clone_shared(repo: Path, ws: Path, branch: str, base: str) -> None:
    gitops.git(repo, "clone", "--quiet", "--shared", "--no-checkout", str(repo), str(ws))
    gitops.git(ws, "remote", "remove", "origin")
    gitops.git(ws, "checkout", "--quiet", "--force", "-B", branch, base)


PREPARE: dict[str, Callable[[Path, Path, str, str], None]] = {
    "worktree": _worktree, "own repository": _own, "clone --shared": _clone_shared}


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(repo: Path, scratch: Path, reps: int) -> dict[str, Any]:
    base = gitops.rev(repo, "HEAD")
    prepare: dict[str, list[float]] = {w: [] for w in WAYS}
    remove: dict[str, list[float]] = {w: [] for w in WAYS}
    fetch_back: list[float] = []
    loads = [os.getloadavg()[0]]
    for rep in range(reps):
        order = WAYS if rep % 2 == 0 else tuple(reversed(WAYS))  # alternate: no way always goes first
        for i, way in enumerate(order):
            ws, branch = scratch / f"ws-{rep}-{i}", f"bench/ws-{rep}-{i}"
            try:
                prepare[way].append(_timed(lambda: PREPARE[way](repo, ws, branch, base)))  # noqa: B023
                if way == "own repository":
                    ws.joinpath("bench-one.txt").write_text(str(rep))
                    gitops.commit_all(ws, "bench", dict(IDENTITY))
                    fetch_back.append(_timed(lambda: gitops.fetch(repo, ws, [f"+refs/heads/{branch}:refs/heads/{branch}"])))  # noqa: B023,E501
                remove[way].append(_timed(lambda: gitops.workspace_remove(repo, ws)))  # noqa: B023
            finally:
                if ws.exists():
                    shutil.rmtree(ws, ignore_errors=True)
                gitops.worktree_prune(repo)
                gitops.git(repo, "branch", "-D", "--quiet", branch, check=False)
    loads.append(os.getloadavg()[0])
    old = summary(prepare["worktree"])["median"]
    return {
        "prepare": {w: summary(v) for w, v in prepare.items()},
        "remove": {w: summary(v) for w, v in remove.items()},
        "fetch_back": summary(fetch_back),
        "ratio": {w: round(summary(v)["median"] / old, 3) if old else None for w, v in prepare.items()},
        "loadavg": [round(x, 2) for x in loads],
        "target": TARGET,
    }


def run(session: Session, cfg: Config) -> dict[str, Any]:
    rows = []
    reps = max(5, cfg.light_reps * 3)
    for files in (1000, 20000):
        repo = session.repo(files)
        n = reps * 3 if files <= 1000 else reps  # a tenth of a second each: more repetitions steady the median
        session.log(f"  workspaces: {files}-file repo, {n} rep(s) of each way")
        rows.append({"files": files, **measure(repo, session.root / f"workspaces-{files}", n)})
    return {"rows": rows, "target": TARGET}
