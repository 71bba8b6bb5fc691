"""Resume a journaled run where it stopped: finished units are kept (also those whose commit reached their
branch before a killed coordinator could journal it), orphaned agents are killed, and everything else runs
again from the merge of its dependencies. An interrupted agent session is continued where the agent can."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distpar.coordinator.journal import Journal
from distpar.coordinator.preflight import preflight
from distpar.coordinator.runtime import (
    DEFAULT_TIMEOUT,
    Observer,
    RunLock,
    RunOptions,
    kill_run_processes,
    load_run,
)
from distpar.core.errors import DistparError
from distpar.core.model import WARN_SIZE, AgentConfig, UnitResult, UnitStatus
from distpar.core.plan import Plan
from distpar.core.schedule import Schedule
from distpar.infra import gitops
from distpar.infra.paths import state_dir

if TYPE_CHECKING:
    from distpar.coordinator.executor import Runner


def resume_runner(repo: Path, journal: Journal, run_id: str, observer: Observer | None = None,
                  retries: int | None = None, timeout: float | None = None) -> Runner:
    """A Runner that continues a journaled run where it stopped; it holds the run's lock (one coordinator)."""
    run = load_run(journal, run_id)
    lock = RunLock(state_dir(repo) / "runs" / run["id"], run["id"]).acquire()  # before anything changes
    try:
        return _runner(repo, journal, run, observer, retries, timeout, lock)
    except BaseException:
        lock.release()
        raise


def _runner(repo: Path, journal: Journal, run: dict[str, Any], observer: Observer | None, retries: int | None,
            timeout: float | None, lock: RunLock) -> Runner:
    from distpar.backends import make_backend
    from distpar.coordinator.executor import Runner
    from distpar.core.plan import load_plan

    plan = Plan.from_dict(json.loads(run["plan"]))
    schedule = Schedule.from_dict(json.loads(run["schedule"]))
    # A plan file edited since (say, to fix a failed batch's prompt) is used when its batches and dependencies
    # are unchanged; otherwise the journaled plan is.
    try:
        edited = load_plan(run["plan_path"])
        if [(b.id, b.depends_on) for b in edited.batches] == [(b.id, b.depends_on) for b in plan.batches]:
            plan = edited
    except DistparError:
        pass
    opts = json.loads(run["options"])
    backend_options = dict(opts.get("backend_options") or {})
    for key in ("hosts_file", "identity"):
        if backend_options.get(key):
            backend_options[key] = Path(backend_options[key])
    options = RunOptions(
        agent=AgentConfig.from_dict(opts["agent"]),
        timeout=timeout or opts.get("timeout", DEFAULT_TIMEOUT),
        into=run["target"],
        allow_dirty=True,
        keep_branches=opts.get("keep_branches", False),
        retries=opts.get("retries", 0) if retries is None else retries,
        forward_env=tuple(opts.get("forward_env", ())),
        backend=run["backend"],
        plan_path=run["plan_path"],
        repo_url=opts.get("repo_url"),
        backend_options=backend_options,
        budget_usd=opts.get("budget_usd"),
        agent_retries=opts.get("agent_retries", 2),
        max_concurrent_agents=opts.get("max_concurrent_agents"),
        stagger=opts.get("stagger", 0.1),
        stop_on_conflict=opts.get("stop_on_conflict", False),
        setup=opts.get("setup"),
        verify=opts.get("verify"),
        verify_merged=opts.get("verify_merged"),
        push=opts.get("push"),
        ship_included=opts.get("ship_included", False),
        independent=opts.get("independent", False),
        split=opts.get("split"),
        hooks=opts.get("hooks", False), warn_size=opts.get("warn_size", WARN_SIZE),
        sandbox=opts.get("sandbox", False), sandbox_allow=tuple(opts.get("sandbox_allow", ())),
    )
    preflight(repo, options, plan)
    backend = make_backend(run["backend"], backend_options)
    runner = Runner(repo, plan, schedule, options, backend, journal, run["target"], run["base"], observer,
                    run_id=run["id"], resume=True)
    runner.lock = lock
    return runner


def committed_unit(repo: Path, branch: str, run_id: str, uid: str) -> str | None:
    """The tip of ``branch`` when it is the finished commit of unit ``uid`` of ``run_id`` (its trailers say so)."""
    tip = gitops.try_rev(repo, f"refs/heads/{branch}")
    if tip is None:
        return None
    fmt = ("%(trailers:key=Distpar-Run,valueonly,separator=%x1e)%x1f"
           "%(trailers:key=Distpar-Batch,valueonly,separator=%x1e)")
    run, _, unit = gitops.out(repo, "log", "-1", f"--format={fmt}", tip).partition("\x1f")
    return tip if run.strip() == run_id and unit.strip() == uid else None


def restore(runner: Runner) -> None:
    """Pick up the journaled run ``runner`` continues."""
    kill_run_processes(runner.run_id)  # agents orphaned by a coordinator that was killed
    repo, run_id, journal = runner.repo, runner.run_id, runner.journal
    gitops.worktree_prune(repo)
    rows = {r["unit_id"]: r for r in journal.units(run_id)}
    recovered: dict[str, str] = {}
    for u in runner.units:
        if rows.get(u.uid, {}).get("state") == "ok":
            continue
        commit = committed_unit(repo, runner.branch(u.uid), run_id, u.uid)
        if commit:
            recovered[u.uid] = commit
    for uid, row in rows.items():
        # An interrupted unit goes on from its saved work, in its agent session where the agent can continue one
        # (and only on the node that holds it: the worker checks).
        if row["state"] == "interrupted" and uid not in recovered:
            saved = gitops.try_rev(repo, runner.saved_ref(uid))
            if row["session_id"] or saved:
                runner.resume_sessions[uid] = (row["session_id"], saved, row["node"])
    resumes = sum(1 for e in journal.events(run_id) if e.kind == "run_resumed") + 1
    journal.resume_run(run_id, os.getpid(), recovered)
    for uid, row in rows.items():
        if row["state"] == "ok" or uid in recovered:
            runner.results[uid] = UnitResult(
                uid, row["worker"], UnitStatus.OK, row["exit_code"], row["started"], row["ended"],
                recovered.get(uid) or row["commit_oid"], bool(row["changed"]) or uid in recovered,
                None, row["log_path"], "", "", row["node"] or "", row["attempt"] or 1,
            )
    runner.dispatches = 1000 * resumes  # keeps bundle and ref names of this attempt unique
    runner.saved_refs.extend(gitops.refs(repo, f"refs/distpar/{run_id}/saved/"))
    runner.emit("run_resumed", run_id=run_id, done=len(runner.results), recovered=sorted(recovered),
                done_units=sorted(runner.results))


__all__ = ["committed_unit", "kill_run_processes", "restore", "resume_runner"]
