"""What a run hands back (``RunReport``) and the ground it stands on: its journal, its lock (one coordinator per
run), the identity of its commits, the agents a dead coordinator left. The run itself:
``distpar.coordinator.executor`` (effects) and ``distpar.core.state`` (decisions); building one:
``distpar.coordinator.prepare``."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from distpar.coordinator.journal import Journal
from distpar.coordinator.merge import Conflict
from distpar.core.errors import ExitCode, UsageError, most_severe
from distpar.core.model import Identity, UnitResult
from distpar.infra import gitops, paths
from distpar.infra.process import agent_processes, kill_process_group, pid_alive

log = logging.getLogger(__name__)



@dataclass
class RunReport:
    run_id: str
    state: str  # ok, failed, conflict, interrupted, error
    exit_code: ExitCode
    target: str
    results: list[UnitResult]
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
    reruns: list[dict[str, Any]] = field(default_factory=list)  # the merge queue's decisions (--on-conflict rerun)
    resolutions: list[dict[str, Any]] = field(default_factory=list)  # the agent's resolutions (--on-conflict resolve)
    gate: dict[str, Any] | None = None  # --verify-merged's result when it failed (workspace.HookResult)
    review: str | None = None  # --review: the integrated, gated head waiting for ``distpar land`` (state review)
    fixes: list[dict[str, Any]] = field(default_factory=list)  # --on-verify-fail fix: each fix unit's end
    bisected: dict[str, Any] | None = None  # with a failed gate: the first unit whose merge fails it (Bisected)
    pushed: list[str] = field(default_factory=list)  # refs pushed to --push REMOTE
    stopped: str = ""  # why no new unit started before the end (a usage limit that resets far away)
    spent: float | None = None  # the journal's sum: every attempt's cost, across retries and resumes
    warnings: list[str] = field(default_factory=list)  # what the checks before the run found worth saying

    STATES: ClassVar[dict[ExitCode, str]] = {
        ExitCode.OK: "ok", ExitCode.BATCH_FAILED: "failed", ExitCode.CONFLICT: "conflict",
        ExitCode.BACKEND: "error", ExitCode.INTERRUPTED: "interrupted", ExitCode.GATE_FAILED: "gate_failed",
    }

    @property
    def agent_time(self) -> float:
        return sum(r.duration for r in self.results)

    @property
    def speedup(self) -> float:
        return self.agent_time / self.wall if self.wall > 0 else 0.0

    @property
    def cost_usd(self) -> float | None:
        if self.spent is not None:
            return self.spent
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
            "units": counts,
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
            "reruns": self.reruns,
            "resolutions": self.resolutions,
            "gate": self.gate,
            "bisected": self.bisected,
            "fixes": self.fixes,
            "review": self.review,
            "pushed": self.pushed,
            "stopped": self.stopped,
            "warnings": self.warnings,
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


def exit_code(*, failed: bool, conflict: bool, errors: bool, gate: bool, interrupted: bool,
              pending: bool) -> ExitCode:
    """The run's exit code: the most severe of what happened (a unit failed, a conflict, a transport or git error,
    the merged gate failed, an interrupt, units never started for a budget or a conflict found early)."""
    codes = [ExitCode.OK]
    codes += [ExitCode.BATCH_FAILED] if failed else []
    codes += [ExitCode.CONFLICT] if conflict else []
    codes += [ExitCode.BACKEND] if errors else []
    codes += [ExitCode.GATE_FAILED] if gate else []
    codes += [ExitCode.INTERRUPTED] if interrupted else []
    codes += [ExitCode.BATCH_FAILED] if pending and not interrupted and not errors else []
    return most_severe(*codes)
