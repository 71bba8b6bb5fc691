"""What a run is given and what it hands back (options, report), and the ground it stands on: where its state
lives, its journal, the checks before it starts. The run itself: ``distpar.coordinator.executor`` (effects) and
``distpar.core.state`` (decisions); resuming one: ``distpar.coordinator.resume``."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode, UsageError, most_severe
from distpar.core.model import WARN_SIZE, AgentConfig, Identity
from distpar.infra import gitops, paths
from distpar.infra.process import agent_processes, kill_process_group, pid_alive

if TYPE_CHECKING:
    from distpar.coordinator.executor import Runner

from distpar.coordinator.merge import Conflict
from distpar.core.model import BatchResult

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3600.0
Observer = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class RunOptions:
    agent: AgentConfig = field(default_factory=AgentConfig)
    timeout: float = DEFAULT_TIMEOUT
    into: str | None = None
    allow_dirty: bool = False
    keep_branches: bool = False
    retries: int = 2  # transport failures: a segment whose worker, node or host died runs again
    forward_env: tuple[str, ...] = ()
    backend: str = "local"
    plan_path: str = ""
    repo_url: str | None = None  # remote workers clone from and push to this remote instead of bundles
    backend_options: dict[str, Any] = field(default_factory=dict)  # journaled for resume: never secrets
    budget_usd: float | None = None  # run-wide: once the reported costs reach it, no batch starts
    agent_retries: int = 2  # transient agent failures (rate limit, 5xx, early crash): tries again in the worker
    max_concurrent_agents: int | None = None  # agents running at once per worker process (the whole local run)
    stagger: float = 0.1  # seconds between agent starts per worker process
    stop_on_conflict: bool = False  # stop starting units once a conflict with finished work is found
    setup: str | None = None  # run once in every new workspace before its first unit
    verify: str | None = None  # run after every batch in its worktree: failing fails the batch
    verify_merged: str | None = None  # run on the merged tree before the target moves: failing lands nothing
    push: str | None = None  # a remote the unit and integration branches (and a tracking target) are pushed to
    ship_included: bool = False  # remote workers get the .worktreeinclude files too (they often hold secrets)
    independent: bool = False  # the plan's batches need not wait for each other (--independent)
    split: int | None = None  # midpoint: cut after this batch (--split)
    hooks: bool = False  # batch commits run the repository's pre-commit, commit-msg and post-commit hooks
    warn_size: int | None = WARN_SIZE  # bytes: a batch adding a bigger file gets a warning
    sandbox: bool = False  # agents run under bubblewrap, writing only their worktree and sandbox_allow
    sandbox_allow: tuple[str, ...] = ()


@dataclass
class RunReport:
    run_id: str
    state: str  # ok, failed, conflict, interrupted, error
    exit_code: ExitCode
    target: str
    results: list[BatchResult]
    pending: list[str]  # batches never started (interrupted runs)
    wall: float
    conflict: Conflict | None = None
    errors: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)  # branches kept
    saved_refs: list[str] = field(default_factory=list)
    landed: str | None = None  # target's new head
    budget_usd: float | None = None  # the run's --budget-usd
    budget_exhausted: bool = False  # batches were left unstarted because the budget was spent
    predicted_conflicts: list[dict[str, Any]] = field(default_factory=list)  # found before the final merge
    gate: dict[str, Any] | None = None  # --verify-merged's result when it failed (workspace.HookResult)
    pushed: list[str] = field(default_factory=list)  # refs pushed to --push REMOTE
    stopped: str = ""  # why no new unit started before the end (a usage limit that resets far away)

    @property
    def agent_time(self) -> float:
        return sum(r.duration for r in self.results)

    @property
    def speedup(self) -> float:
        return self.agent_time / self.wall if self.wall > 0 else 0.0

    @property
    def cost_usd(self) -> float | None:
        costs = [r.outcome.cost_usd for r in self.results if r.outcome and r.outcome.cost_usd is not None]
        return sum(costs) if costs else None

    def tokens(self) -> tuple[int, int]:
        i = sum((r.outcome.input_tokens or 0) for r in self.results if r.outcome)
        o = sum((r.outcome.output_tokens or 0) for r in self.results if r.outcome)
        return i, o

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        if self.pending:
            counts["pending"] = len(self.pending)
        return {
            "run_id": self.run_id,
            "state": self.state,
            "exit_code": int(self.exit_code),
            "target": self.target,
            "batches": counts,
            "wall": round(self.wall, 3),
            "agent_time": round(self.agent_time, 3),
            "speedup": round(self.speedup, 3),
            "cost_usd": self.cost_usd,
            "tokens": dict(zip(("input", "output"), self.tokens(), strict=True)),
            "conflict": self.conflict.to_dict() if self.conflict else None,
            "errors": self.errors,
            "branches": self.branches,
            "saved_refs": self.saved_refs,
            "landed": self.landed,
            "budget": self.budget(),
            "predicted_conflicts": self.predicted_conflicts,
            "gate": self.gate,
            "pushed": self.pushed,
            "stopped": self.stopped,
        }

    def budget(self) -> dict[str, Any] | None:
        if self.budget_usd is None:
            return None
        spent = self.cost_usd or 0.0
        return {"limit": self.budget_usd, "spent": round(spent, 6),
                "left": round(max(0.0, self.budget_usd - spent), 6), "exhausted": self.budget_exhausted}





def open_journal(repo: Path) -> Journal:
    return Journal(paths.state_dir(repo) / "journal.db")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)




def kill_run_processes(run_id: str) -> list[int]:
    """Kill the process groups of agents started for ``run_id`` whose coordinator is gone (Linux /proc)."""
    pids = agent_processes().get(run_id, [])
    for pid in pids:
        kill_process_group(pid, grace=0.5)
    return pids


def run_is_live(journal: Journal, run: dict[str, Any] | None) -> bool:
    """The journal says the run is running and its coordinator is that same process, still there."""
    if run is None or run["state"] != "running":
        return False
    if not run["pid"]:
        return True  # cannot tell: assume live, touch nothing
    recorded = max([float(run["started"]), *(e.ts for e in journal.events(run["id"]) if e.kind == "run_resumed")])
    return pid_alive(int(run["pid"]), recorded)


def load_run(journal: Journal, run_id: str) -> dict[str, Any]:
    """The journaled run to resume, or a UsageError saying why it cannot be."""
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    if run["state"] == "ok":
        raise UsageError(f"run {run['id']} finished successfully: nothing to resume")
    if run_is_live(journal, run) and run["pid"] != os.getpid():
        raise UsageError(f"run {run['id']} is still running (coordinator pid {run['pid']})")
    return run


class RunLock:
    """One coordinator per run: an exclusive lock on ``<run dir>/coordinator.lock``, held for the whole run
    (the kernel drops it when the process dies, however it dies). A second ``distpar resume`` of a run that a
    live coordinator holds is refused, naming that coordinator."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.path, self.run_id = run_dir / "coordinator.lock", run_id
        self._file: Any = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise UsageError(f"run {self.run_id} is already being run by coordinator pid {holder}",
                             hint="wait for it to end (distpar status), or stop it; one coordinator per run") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def git_identity(repo: Path) -> Identity:
    name = gitops.git(repo, "config", "user.name", check=False).stdout.strip()
    email = gitops.git(repo, "config", "user.email", check=False).stdout.strip()
    return Identity(name or "distpar", email or "distpar@localhost")




def run_row(runner: Runner, t0: float) -> dict[str, Any]:
    """The journal's row for a new run: everything resume needs (never a secret: variable names only)."""
    o = runner.options
    opts = {
        "agent": o.agent.to_dict(),
        "timeout": o.timeout,
        "retries": o.retries,
        "keep_branches": o.keep_branches,
        "forward_env": list(o.forward_env),  # names only, never values
        "budget_usd": o.budget_usd,
        "agent_retries": o.agent_retries,
        "max_concurrent_agents": o.max_concurrent_agents,
        "stagger": o.stagger,
        "stop_on_conflict": o.stop_on_conflict,
        "setup": o.setup,
        "verify": o.verify,
        "verify_merged": o.verify_merged,
        "push": o.push,
        "ship_included": o.ship_included,
        "independent": o.independent,
        "split": o.split,
        "hooks": o.hooks,
        "warn_size": o.warn_size,
        "sandbox": o.sandbox,
        "sandbox_allow": list(o.sandbox_allow),
        "repo_url": o.repo_url,
        "into": o.into,
        "backend_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in o.backend_options.items()},
    }
    return {
        "id": runner.run_id,
        "plan_path": o.plan_path or runner.plan.source,
        "plan_id": runner.plan.plan_id,
        "repo": str(runner.repo),
        "target": runner.target,
        "base": runner.start,
        "backend": runner.backend.name,
        "workers": runner.workers,
        "strategy": runner.schedule.strategy,
        "state": "running",
        "started": t0,
        "pid": os.getpid(),
        "plan": json.dumps(runner.plan.to_dict()),
        "schedule": json.dumps(runner.schedule.to_dict()),
        "options": json.dumps(opts),
    }


def make_report(runner: Runner, wall: float, landed: str | None) -> RunReport:
    """What a run ended with. After a clean landing the run's branches and refs (not its saved work) go."""
    repo = runner.repo
    results = [runner.results[uid] for uid in runner.order if uid in runner.results]
    pending = [uid for uid in runner.order if uid not in runner.results]
    interrupted = runner.interrupted.is_set() and landed is None  # an interrupt after landing changed nothing
    codes = [ExitCode.OK]
    if any(not r.status.ok for r in results if r.batch_id not in runner.empty):
        codes.append(ExitCode.BATCH_FAILED)
    if runner.conflict:
        codes.append(ExitCode.CONFLICT)
    if runner.errors:
        codes.append(ExitCode.BACKEND)
    if runner.gate is not None:
        codes.append(ExitCode.GATE_FAILED)
    if interrupted:
        codes.append(ExitCode.INTERRUPTED)
    if pending and not interrupted and not runner.errors:
        codes.append(ExitCode.BATCH_FAILED)  # budget spent, or stopped at a conflict found early
    code = most_severe(*codes)
    state = {
        ExitCode.OK: "ok", ExitCode.BATCH_FAILED: "failed", ExitCode.CONFLICT: "conflict",
        ExitCode.BACKEND: "error", ExitCode.INTERRUPTED: "interrupted", ExitCode.GATE_FAILED: "gate_failed",
    }[code]
    branches = [runner.branch(u.uid) for u in runner.units] + [runner.integration]
    if landed is not None and runner.conflict is None and not runner.options.keep_branches:
        for i in range(0, len(branches), 500):  # one git process per 500 branches, not one per branch
            gitops.git(repo, "branch", "-D", "--quiet", *branches[i:i + 500], check=False)
        for ref in gitops.refs(repo, f"refs/distpar/{runner.run_id}/"):
            if "/saved/" not in ref:
                gitops.delete_ref(repo, ref)
        branches = []
    else:
        branches = [b for b in branches if gitops.try_rev(repo, f"refs/heads/{b}")]
    return RunReport(
        run_id=runner.run_id, state=state, exit_code=code, target=runner.target, results=results,
        pending=pending, wall=wall, conflict=runner.conflict, errors=runner.errors, branches=branches,
        saved_refs=sorted(set(runner.saved_refs)), landed=landed, budget_usd=runner.options.budget_usd,
        budget_exhausted=runner.budget_exhausted, predicted_conflicts=runner.predicted,
        gate=runner.gate.to_dict() if runner.gate else None, pushed=runner.pushed, stopped=runner.rate_stop,
    )
