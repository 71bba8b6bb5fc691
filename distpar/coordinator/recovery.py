"""Resume a journaled run where it stopped: finished units are kept (also those whose commit reached their
branch before a killed coordinator could journal it), orphaned agents are killed, and everything else runs
again from the merge of its dependencies. An interrupted agent session is continued where the agent can.
The Runner that continues a run is built by ``distpar.coordinator.prepare.prepare_resume``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from distpar.coordinator.journal import Journal
from distpar.coordinator.runtime import kill_run_processes
from distpar.coordinator.site import RunSite
from distpar.core.errors import UsageError
from distpar.core.model import UnitResult, UnitStatus
from distpar.core.state import UnitInfo
from distpar.infra import gitops, paths


def committed_unit(repo: Path, branch: str, run_id: str, uid: str) -> str | None:
    """The tip of ``branch`` when it is the finished commit of unit ``uid`` of ``run_id`` (its trailers say so)."""
    tip = gitops.try_rev(repo, f"refs/heads/{branch}")
    if tip is None:
        return None
    fmt = ("%(trailers:key=Distpar-Run,valueonly,separator=%x1e)%x1f"
           "%(trailers:key=Distpar-Batch,valueonly,separator=%x1e)")
    run, _, unit = gitops.out(repo, "log", "-1", f"--format={fmt}", tip).partition("\x1f")
    return tip if run.strip() == run_id and unit.strip() == uid else None


@dataclass
class Recovery:
    """What a resumed run starts from."""

    results: dict[str, UnitResult] = field(default_factory=dict)  # units done (journaled, or found committed)
    sessions: dict[str, tuple[str | None, str | None, str | None]] = field(default_factory=dict)  # see Runner
    recovered: list[str] = field(default_factory=list)  # units whose commit the journal had not recorded
    dispatches: int = 0  # where this attempt's dispatch numbers start (bundle and ref names stay unique)
    saved_refs: list[str] = field(default_factory=list)


def users_branch_back(site: RunSite) -> str | None:
    """When the user's checkout is on one of the run's branches (where the printed commands to resolve a conflict
    or fix a failed gate leave them), switch it back to the branch they came from (the reflog says which; else the
    target) so that nothing the run moves afterwards is checked out. Returns that branch, or None when the
    checkout was elsewhere. A checkout with uncommitted changes there is refused: the resolution is not done."""
    repo = site.repo
    here = gitops.current_branch(repo)
    if here is None or not here.startswith(f"distpar/{site.run_id}/"):
        return None
    if gitops.busy_with(repo, here) or gitops.out(repo, "status", "--porcelain", "--untracked-files=no"):
        raise UsageError(f"{repo} is on {here} with uncommitted changes or an unfinished merge",
                         hint="commit the resolution there (git add <files> && git commit), then resume again")
    back = site.target
    for line in gitops.git(repo, "reflog", "show", "--format=%gs", "HEAD", check=False).stdout.splitlines()[:200]:
        prefix = "checkout: moving from "
        if line.startswith(prefix) and line.endswith(f" to {here}"):
            came = line[len(prefix):-len(f" to {here}")]
            if not came.startswith("distpar/") and gitops.try_rev(repo, f"refs/heads/{came}"):
                back = came
            break
    gitops.git(repo, "switch", "--quiet", back)
    return back


def earlier_wall(journal: Journal, run_id: str, started: float) -> float:
    """The wall time of the run's earlier attempts (each from its start, or resume, to its last event), so that
    a resumed run's summary covers the whole run; the time between attempts (the user's) is not counted."""
    total, begin, last = 0.0, started, started
    for e in journal.events(run_id):
        if e.kind == "run_resumed":
            total += max(0.0, last - begin)
            begin = last = e.ts
        else:
            last = e.ts
    return total + max(0.0, last - begin)


def _fetch_workspaces(repo: Path, run_id: str) -> None:
    """A killed coordinator never fetched what its local workers committed last: bring their unit branches
    over from the workspaces left behind (fast-forwards only: a branch a later attempt elsewhere moved on is
    not taken back)."""
    root = paths.worktrees_root(repo, run_id)
    for ws in sorted(root.glob("w*")) if root.is_dir() else ():
        if gitops.is_own_repository(ws):
            gitops.git(repo, "fetch", "--quiet", "--no-tags", str(ws),
                       f"refs/heads/distpar/{run_id}/*:refs/heads/distpar/{run_id}/*", check=False)


def recover(site: RunSite, journal: Journal, units: list[UnitInfo]) -> Recovery:
    """Pick up the journaled run ``site.run_id``: kill its orphaned agents, and find what is done, what was
    interrupted (its session and saved work) and what was committed but not journaled."""
    kill_run_processes(site.run_id)  # agents orphaned by a coordinator that was killed
    repo, run_id = site.repo, site.run_id
    gitops.worktree_prune(repo)
    _fetch_workspaces(repo, run_id)
    rows = {r["unit_id"]: r for r in journal.units(run_id)}
    rec = Recovery()
    recovered: dict[str, str] = {}
    for u in units:
        if rows.get(u.uid, {}).get("state") == "ok":
            continue
        commit = committed_unit(repo, site.branch(u.uid), run_id, u.uid)
        if commit:
            recovered[u.uid] = commit
    for uid, row in rows.items():
        # An interrupted unit goes on from its saved work, in its agent session where the agent can continue one
        # (and only on the node that holds it: the worker checks).
        if row["state"] == "interrupted" and uid not in recovered:
            saved = gitops.try_rev(repo, site.saved_ref(uid))
            if row["session_id"] or saved:
                rec.sessions[uid] = (row["session_id"], saved, row["node"])
    resumes = sum(1 for e in journal.events(run_id) if e.kind == "run_resumed") + 1
    journal.resume_run(run_id, os.getpid(), recovered)
    for uid, row in rows.items():
        if row["state"] == "ok" or uid in recovered:
            rec.results[uid] = UnitResult(
                uid, row["worker"], UnitStatus.OK, row["exit_code"], row["started"], row["ended"],
                recovered.get(uid) or row["commit_oid"], bool(row["changed"]) or uid in recovered,
                None, row["log_path"], "", "", row["node"] or "", row["attempt"] or 1,
            )
    rec.recovered = sorted(recovered)
    rec.dispatches = 1000 * resumes
    rec.saved_refs = list(gitops.refs(repo, f"refs/distpar/{run_id}/saved/"))
    return rec
