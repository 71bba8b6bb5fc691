"""Runs plans through distpar's Python API (the objects the CLI assembles) and reads back their timelines.

A ``Session`` owns a scratch directory, an isolated environment (its own ``DISTPAR_HOME``, an empty global git
config) and a cache of generated repositories. ``Session.run`` runs one plan and returns a ``RunRecord``: the
wall time, the time spent planning, and the phases reconstructed from the journal's events and the batches'
agent start/end times (see ``phases``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.plans import Node, to_batches
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.core.model import AgentConfig
from distpar.core.plan import load_plan
from distpar.core.schedule import make_schedule
from distpar.testing.builders import make_repo, write_plan

RUN_ATTEMPTS = 3
_UNSET = ("DISTPAR_SUBPROCESS", "CLAUDECODE", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")


def cpu_idle(seconds: float) -> float:
    """The fraction of CPU time spent idle over the next ``seconds`` (from /proc/stat; 1.0 where absent)."""
    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)
    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None or b[1] == a[1]:
        return 1.0
    return (b[0] - a[0]) / (b[1] - a[1])


class BenchError(Exception):
    """A benchmark run did not do what it was meant to (a batch failed, a backend broke)."""


def ended_ok(report: Any, what: str) -> None:
    """Raise ``BenchError`` naming the failed units unless the run ``what`` ended ok."""
    if report.state != "ok":
        bad = [f"{r.unit_id}: {r.status.value} {r.error}" for r in report.results if not r.status.ok]
        raise BenchError(f"{what} ended {report.state}: {'; '.join(report.errors + bad)[:500]}")


@dataclass
class RunRecord:
    label: str
    backend: str
    strategy: str
    workers: int  # --workers as given
    used_workers: int  # the workers the executor ran (a pinned strategy runs one per pinned lane)
    batches: int  # units that ran (one per batch today)
    state: str
    wall: float  # planning + preflight + Runner.run, seconds
    planning: float  # parse + schedule
    preflight: float
    run: float  # Runner.run alone
    requested_agent: float  # sum of the plan's sleeps
    predicted: dict[str, float]  # the scheduler's makespan, lower bound, serial, critical path (seconds)
    agent_busy: float  # sum of agent process lifetimes
    agent_span: float  # first agent start -> last agent end
    busiest_worker_agent: float  # max over workers of the agent process time of the units it ran
    phases: dict[str, float]
    loadavg: float
    nonce: str = ""  # the run's own name in the plan (its files are under bench/<nonce>/)
    timeline: list[list[Any]] = field(default_factory=list)  # [unit, worker, agent start, agent end], s from t0
    commits: dict[str, str] = field(default_factory=dict)  # unit -> its commit (not in to_dict)
    journal_bytes_before: int = 0
    journal_bytes_after: int = 0

    @property
    def overhead(self) -> float:
        """Coordinator overhead: the wall time minus the agents' own time on the busiest worker."""
        return self.wall - self.busiest_worker_agent

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("commits")
        d["overhead"] = round(self.overhead, 4)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


class Session:
    def __init__(self, root: Path | None = None, log: Any = None, keep: bool = False) -> None:
        """``root``: the scratch directory (default: a new temporary one), emptied first and removed by
        ``close()`` unless ``keep``."""
        self._own = not keep
        self.root = Path(tempfile.mkdtemp(prefix="bench-scratch-")) if root is None else root
        if root is not None and root.exists():  # a kept scratch of an earlier session
            shutil.rmtree(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = self.root / "state"
        self._repos: dict[str, Path] = {}
        self._count = 0
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._t0 = time.perf_counter()
        self.repo_build_seconds: dict[str, float] = {}
        self.failures: list[dict[str, Any]] = []
        self.batches_run = 0  # batches of successful runs, all journaled in this session's journal

    def settle(self, idle: float = 0.85, limit: float = 90.0) -> float:
        """Wait (at most ``limit`` s) until the CPUs are ``idle`` idle over a second, so that a target run does
        not inherit the tail of the one before (a Ray cluster's teardown, 64 agents' exits). Returns the
        idle fraction it ended with."""
        deadline = time.monotonic() + limit
        while True:
            got = cpu_idle(1.0)
            if got >= idle or time.monotonic() >= deadline:
                self.log(f"  (settled: CPUs {got:.0%} idle)")
                return got

    def log(self, msg: str) -> None:
        self._log(f"[{time.perf_counter() - self._t0:6.1f}s] {msg}")

    @contextmanager
    def environment(self) -> Iterator[None]:
        """Isolate git and distpar state from the user's for the duration (restored afterwards)."""
        gitconfig = self.root / "gitconfig"
        gitconfig.write_text("")
        new = {
            "DISTPAR_HOME": str(self.state),
            "GIT_CONFIG_GLOBAL": str(gitconfig),
            "GIT_CONFIG_NOSYSTEM": "1",
            "FAKE_AGENT_STATE": str(self.root),
            "DISTPAR_RAY_DIR": str(self.root / "ray-nodes"),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # a local cluster of this session only (as the Ray tests start one)
        }
        saved = {k: os.environ.get(k) for k in (*new, *_UNSET)}
        os.environ.update(new)
        for k in _UNSET:
            os.environ.pop(k, None)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- repositories --------------------------------------------------------------------------------------

    def repo(self, files: int) -> Path:
        """A repository with one commit of ``files`` small Python files (2 means a README and one module),
        built once per session."""
        key = f"repo-{files}"
        if key not in self._repos:
            t = time.perf_counter()
            if files <= 2:
                content = {"README.md": "# bench\n", "src/__init__.py": ""}
            else:
                content = {f"pkg{i // 200:03d}/mod{i:05d}.py": f"VALUE = {i}\n" for i in range(files - 1)}
                content["README.md"] = "# bench\n"
            self._repos[key] = make_repo(self.root / key, content)
            self.repo_build_seconds[key] = time.perf_counter() - t
        return self._repos[key]

    def journal_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.state.glob("journal.db*") if p.exists())

    # --- one run -------------------------------------------------------------------------------------------

    def run(self, label: str, nodes: list[Node], workers: int, *, strategy: str = "balanced", files: int = 2,
            backend: str = "local", backend_options: dict[str, Any] | None = None,
            manifest: Callable[[str], list[dict[str, Any]]] | None = None,
            sleeps: dict[str, float] | None = None, stagger: float | None = None) -> RunRecord:
        """Run a plan (``stagger``: ``--stagger``, default distpar's own); a run that does not end ok is recorded
        in ``failures`` and run again (twice at most), so one flaky run does not lose a session, and the report
        still shows that it happened.

        The plan is ``nodes`` (one batch each), or ``manifest(nonce)``'s batches when given (then ``sleeps``
        holds each unit's requested seconds and ``nodes`` is not used)."""
        for attempt in range(1, RUN_ATTEMPTS + 1):
            try:
                return self._run_once(label, nodes, workers, strategy, files, backend, backend_options, manifest,
                                      sleeps, stagger)
            except BenchError as exc:
                self.failures.append({"label": label, "attempt": attempt, "error": str(exc)[:1000]})
                self.log(f"  ! run {label} failed (attempt {attempt} of {RUN_ATTEMPTS}): {str(exc)[:300]}")
                if attempt == RUN_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _run_once(self, label: str, nodes: list[Node], workers: int, strategy: str, files: int, backend: str,
                  backend_options: dict[str, Any] | None,
                  manifest: Callable[[str], list[dict[str, Any]]] | None,
                  unit_sleeps: dict[str, float] | None, stagger: float | None) -> RunRecord:
        self._count += 1
        nonce = f"r{self._count}"
        repo = self.repo(files)
        batches = manifest(nonce) if manifest else to_batches(nodes, nonce)
        # Node plans say their batches are independent (but for declared depends_on); a manifest (the CAST
        # plan) follows the protocol's default, ordered stages.
        plan_path = write_plan(self.root / f"plan-{nonce}.md", batches, plan_id=f"bench-{label}",
                               independent=manifest is None)
        sleeps = unit_sleeps if manifest and unit_sleeps is not None else {x.id: x.seconds for x in nodes}
        journal_before = self.journal_bytes()
        load = os.getloadavg()[0]

        t0, t_wall0 = time.perf_counter(), time.time()
        plan = load_plan(plan_path)
        schedule = make_schedule(plan, workers, strategy)
        t1 = time.perf_counter()
        opts = RunOptions(agent=AgentConfig(preset="fake"), backend=backend, backend_options=backend_options or {},
                          **({"stagger": stagger} if stagger is not None else {}))
        prepared = prepare_run(plan_path, opts, repo=repo, workers=workers, strategy=strategy, plan=plan)
        t2 = time.perf_counter()
        runner, journal = prepared.runner, prepared.journal
        try:
            t_run = time.time()
            report = runner.run()
            t3 = time.perf_counter()
            t_end = time.time()
            events = journal.events(runner.run_id)
            rows = journal.units(runner.run_id)
        finally:
            journal.close()
        ended_ok(report, f"run {label}")

        self.batches_run += len(rows)
        to_s = 60.0  # the scheduler works in minutes
        agent = {r["unit_id"]: (r["started"], r["ended"]) for r in rows}
        per_worker: dict[int, float] = {}
        for r in rows:
            per_worker[r["worker"]] = per_worker.get(r["worker"], 0.0) + (r["ended"] - r["started"])
        return RunRecord(
            label=label,
            backend=backend,
            strategy=strategy,
            workers=workers,
            used_workers=runner.workers,
            batches=len(rows),
            state=report.state,
            wall=t3 - t0,
            planning=t1 - t0,
            preflight=t2 - t1,
            run=t3 - t2,
            requested_agent=sum(sleeps.values()),
            predicted={
                "makespan": schedule.makespan * to_s,
                "lower_bound": schedule.lower_bound * to_s,
                "serial": schedule.serial * to_s,
                "critical_path": schedule.critical_path * to_s,
            },
            agent_busy=sum(e - s for s, e in agent.values()),
            agent_span=max(e for _, e in agent.values()) - min(s for s, _ in agent.values()),
            busiest_worker_agent=max(per_worker.values()),
            phases=phases(events, agent, sleeps, t_run, t_end, t1 - t0, t2 - t1),
            loadavg=load,
            nonce=nonce,
            timeline=[[r["unit_id"], r["worker"], round(r["started"] - t_wall0, 3), round(r["ended"] - t_wall0, 3)]
                      for r in sorted(rows, key=lambda r: r["started"])],
            commits={r["unit_id"]: r["commit_oid"] for r in rows if r["commit_oid"]},
            journal_bytes_before=journal_before,
            journal_bytes_after=self.journal_bytes(),
        )


PHASES = (
    "planning", "preflight", "startup", "prepare", "agent_start", "commit_and_return", "dispatch", "merge",
    "cleanup",
)
PHASE_HELP = {
    "planning": "parse the plan file and schedule it (pure code)",
    "preflight": "git version, repository and working-tree checks",
    "startup": "Runner.run until the first unit is submitted: journal rows for the run and its batches, "
               "backend start, the first unit's base",
    "prepare": "unit submitted -> its agent process starts: the worker's workspace created (its first unit) or "
               "moved to the unit's branch and base, code sent to a remote worker (bundle, clone or fetch), "
               "prompt file; summed over units",
    "agent_start": "agent process lifetime beyond the sleep the plan asked for: interpreter start, imports, "
                   "file write, JSON result, exit (a real agent's start-up would show here); summed",
    "commit_and_return": "an agent ends -> the coordinator has collected the unit: commit, log handling, "
                         "hand-back and fetch (remote), the early conflict check; summed",
    "dispatch": "a unit collected -> the next unit it made possible (a free worker, a dependency done) is "
                "submitted: its base merged from its dependencies (deps.base_for) and its transfer source; summed",
    "merge": "ordered merge of the units' branches into the integration branch and the target",
    "cleanup": "workspace snapshots and removal, branch deletion, journal close of the run",
}


def phases(events: list[Any], agent: dict[str, tuple[float, float]], sleeps: dict[str, float], t_run: float,
           t_end: float, planning: float, preflight: float) -> dict[str, float]:
    """Split a run's time into phases from its journal events and the agents' process start/end times.

    Per-unit phases are summed over units (so with several workers they add up to more than the wall time:
    they ran in parallel); the other phases are on the coordinator's one thread."""
    collected: dict[str, float] = {}
    for e in events:
        if e.kind == "unit_ended":
            collected[e.unit_id] = e.ts
    submits = [e for e in events if e.kind == "unit_submitted" and e.unit_id in agent]
    out = dict.fromkeys(PHASES, 0.0)
    out["planning"], out["preflight"] = planning, preflight
    out["startup"] = (min(e.ts for e in submits) - t_run) if submits else 0.0
    last_submit = {e.unit_id: e.ts for e in submits}  # a retried unit: its last attempt ran
    for uid, ts in last_submit.items():
        start, end = agent[uid]
        out["prepare"] += max(0.0, start - ts)
        out["agent_start"] += max(0.0, (end - start) - sleeps.get(uid, 0.0))
        out["commit_and_return"] += max(0.0, collected.get(uid, end) - end)
    # A unit submitted after the first wave was released by the collection just before it (the executor
    # collects, hands the event to the run state, then starts what it says): the time between is its dispatch.
    done = sorted(collected.values())
    first = min(last_submit.values(), default=0.0)
    for ts in last_submit.values():
        earlier = [t for t in done if t <= ts]
        if earlier and ts > first:
            out["dispatch"] += ts - earlier[-1]
    by_kind = {e.kind: e.ts for e in events}
    if "merge_started" in by_kind and "merged" in by_kind:
        out["merge"] = by_kind["merged"] - by_kind["merge_started"]
        out["cleanup"] = t_end - by_kind["merged"]
    return out
