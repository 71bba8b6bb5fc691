"""Carries out a Schedule: dispatch segments to a backend, merge dependencies into bases, retry broken
transports, journal every step, merge the streams in order, clean up. The only module with effects on the
coordinator's repository (through gitops and merge)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distpar import agents, gitops, paths
from distpar import preflight as _preflight
from distpar.backends.base import Backend, RunContext
from distpar.errors import DistparError, ExitCode, UsageError, most_severe
from distpar.journal import Journal
from distpar.merge import Conflict, land, merge_streams
from distpar.model import (
    WARN_SIZE,
    AgentConfig,
    BatchResult,
    BatchSpec,
    BatchStatus,
    Identity,
    SegmentResult,
    SegmentSpec,
    Source,
)
from distpar.plan import Plan
from distpar.process import agent_processes, kill_process_group, pid_alive
from distpar.schedule import Schedule
from distpar.worker import safe_name

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3600.0
CANCEL_WAIT = 30.0  # how long an interrupted run waits for its segments to save their work
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
        }

    def budget(self) -> dict[str, Any] | None:
        if self.budget_usd is None:
            return None
        spent = self.cost_usd or 0.0
        return {"limit": self.budget_usd, "spent": round(spent, 6),
                "left": round(max(0.0, self.budget_usd - spent), 6), "exhausted": self.budget_exhausted}


state_dir = paths.state_dir  # moved to distpar/paths.py


def open_journal(repo: Path) -> Journal:
    return Journal(state_dir(repo) / "journal.db")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


preflight = _preflight.preflight  # moved to distpar/preflight.py; kept for the current coordinator


def committed_batches(repo: Path, base: str, tip: str, run_id: str) -> dict[str, str]:
    """Batch id -> commit, for the batch commits of ``run_id`` on a stream branch (first-parent history)."""
    fmt = ("%H%x1f%(trailers:key=Distpar-Run,valueonly,separator=%x1e)"
           "%x1f%(trailers:key=Distpar-Batch,valueonly,separator=%x1e)%x1d")
    out = gitops.git(repo, "log", "--first-parent", f"--format={fmt}", f"{base}..{tip}").stdout
    found: dict[str, str] = {}
    for rec in out.split("\x1d"):
        parts = rec.strip().split("\x1f")
        if len(parts) == 3 and parts[1].strip() == run_id and parts[2].strip():
            found.setdefault(parts[2].strip(), parts[0])
    return found


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


def resume_runner(repo: Path, journal: Journal, run_id: str, observer: Observer | None = None,
                  retries: int | None = None, timeout: float | None = None) -> Runner:
    """A Runner that continues a journaled run where it stopped."""
    from distpar.backends import make_backend
    from distpar.plan import load_plan
    from distpar.schedule import Schedule

    run = load_run(journal, run_id)
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
        hooks=opts.get("hooks", False), warn_size=opts.get("warn_size", WARN_SIZE),
        sandbox=opts.get("sandbox", False), sandbox_allow=tuple(opts.get("sandbox_allow", ())),
    )
    preflight(repo, options, plan)
    backend = make_backend(run["backend"], backend_options)
    return Runner(repo, plan, schedule, options, backend, journal, run["target"], run["base"], observer,
                  run_id=run["id"], resume=True)


def git_identity(repo: Path) -> Identity:
    name = gitops.git(repo, "config", "user.name", check=False).stdout.strip()
    email = gitops.git(repo, "config", "user.email", check=False).stdout.strip()
    return Identity(name or "distpar", email or "distpar@localhost")


class Runner:
    """One run of a plan. ``run()`` returns a RunReport; it raises only for errors before anything started."""

    def __init__(
        self,
        repo: Path,
        plan: Plan,
        schedule: Schedule,
        options: RunOptions,
        backend: Backend,
        journal: Journal,
        target: str,
        start: str,
        observer: Observer | None = None,
        run_id: str | None = None,
        resume: bool = False,
    ) -> None:
        self.repo, self.plan, self.schedule, self.options = repo, plan, schedule, options
        self.backend, self.journal, self.target, self.start = backend, journal, target, start
        self.observer = observer or (lambda kind, data: None)
        self.run_id = run_id or new_run_id()
        self.run_dir = state_dir(repo) / "runs" / self.run_id
        self.identity = git_identity(repo)
        self.env = self.identity.env()
        self.forwarded = {k: os.environ[k] for k in options.forward_env}
        self.results: dict[str, BatchResult] = {}
        self.heads = {s.index: start for s in schedule.streams}
        self.stream_of = {b: s.index for s in schedule.streams for b in s.batch_ids}
        self.awaited = {d for deps in schedule.waits.values() for d in deps}  # batches other streams wait for
        self.cursor = {s.index: 0 for s in schedule.streams}
        self.segments = {s.index: 0 for s in schedule.streams}
        self.stopped: set[int] = set()
        self.running: dict[Future[SegmentResult], SegmentSpec] = {}
        self.conflict: Conflict | None = None
        self.errors: list[str] = []
        self.saved_refs: list[str] = []
        self.interrupted = threading.Event()
        self._bundle_base: str | None = None
        self.budget_exhausted = False
        self.resumed = resume
        self.resume_sessions: dict[str, tuple[str, str | None]] = {}  # batch -> (agent session, saved work)

    def branch(self, stream: int) -> str:
        return f"distpar/{self.run_id}/s{stream + 1}"

    @property
    def integration(self) -> str:
        return f"distpar/{self.run_id}/integration"

    def emit(self, kind: str, **data: Any) -> None:
        try:
            self.observer(kind, data)
        except Exception:  # an observer must never break a run
            log.exception("observer failed on %s", kind)

    # --- the run ---------------------------------------------------------------------------------------

    def run(self) -> RunReport:
        t0 = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resumed:
            self._restore()
        else:
            batches = [(b.id, self.stream_of[b.id]) for b in self.plan.batches]
            self.journal.start_run(self._run_row(t0), batches)
        self.emit("run_started", run_id=self.run_id, streams=len(self.schedule.streams), target=self.target)
        agents_used = tuple(dict.fromkeys(self._batch_spec(b.id).agent for b in self.plan.batches))
        ctx = RunContext(self.run_id, self.repo, self.run_dir, len(self.schedule.streams), agents_used)
        old = self._install_signals()
        try:
            try:
                self.backend.start(ctx)
                self._loop(ctx)
            except DistparError as exc:  # git or a transport broke under the coordinator: stop, keep everything
                self.errors.append(exc.message)
                self._drain()
            finally:
                self.backend.close()
            landed = None
            if self._all_ok():
                try:
                    landed = self._merge()
                except DistparError as exc:
                    self.errors.append(exc.message)
        finally:
            self._restore_signals(old)
            self._cleanup(ctx)
        report = self._report(t0, landed)
        self.journal.end_run(self.run_id, report.state, int(report.exit_code), report.summary())
        self.emit("run_ended", **report.summary())
        return report

    def _loop(self, ctx: RunContext) -> None:
        self._dispatch_ready(ctx)
        interrupted_at: float | None = None
        while self.running:
            done, _ = wait(list(self.running), timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                self._collect(ctx, fut)
            if self.interrupted.is_set():
                if interrupted_at is None:
                    interrupted_at = time.time()
                    self.journal.event(self.run_id, "interrupted")
                    self.emit("interrupted")
                if time.time() - interrupted_at > CANCEL_WAIT:
                    self.errors.append(f"{len(self.running)} segment(s) did not stop within {CANCEL_WAIT:g}s")
                    break
            else:
                self._dispatch_ready(ctx)

    def _drain(self) -> None:
        """After an error: stop the running segments and take in what they hand back (bounded)."""
        if not self.running:
            return
        self.backend.cancel()
        done, _ = wait(list(self.running), timeout=CANCEL_WAIT)
        for fut in done:
            try:
                self._collect_result(self.running.pop(fut), fut.result())
            except Exception:
                log.exception("a segment failed while the run stopped after an error")

    def _dispatch_ready(self, ctx: RunContext) -> None:
        if self._budget_spent():
            return
        busy = {spec.stream for spec in self.running.values()}
        for stream in self.schedule.streams:
            k = stream.index
            if k in busy or k in self.stopped:
                continue
            i = self.cursor[k]
            if i >= len(stream.batch_ids):
                self.stopped.add(k)
                continue
            first = stream.batch_ids[i]
            waits = self.schedule.waits.get(first, ())
            states = [self.results[d].status if d in self.results else None for d in waits]
            if any(s is None for s in states):
                continue  # a dependency on another stream has not finished yet
            bad = [d for d, s in zip(waits, states, strict=True) if s is not BatchStatus.OK]
            if bad:
                self._stop_stream(k, i, BatchStatus.SKIPPED, f"dependency {', '.join(bad)} did not succeed")
                continue
            base = self._base_with(k, first, waits)
            if base is None:
                continue
            # A segment ends before a batch that waits for another stream, and after one that another stream
            # waits for (so its result is handed back as soon as it exists). With a budget, one batch per
            # segment, so that the budget is checked before every batch starts.
            j = i + 1
            while (self.options.budget_usd is None and j < len(stream.batch_ids)
                   and stream.batch_ids[j - 1] not in self.awaited
                   and not self.schedule.waits.get(stream.batch_ids[j])):
                j += 1
            self._submit(ctx, k, base, stream.batch_ids[i:j], attempt=1)

    def _budget_spent(self) -> bool:
        """Whether ``--budget-usd`` is set and the reported costs have reached it (journaled once)."""
        budget = self.options.budget_usd
        if budget is None:
            return False
        spent = sum(r.outcome.cost_usd for r in self.results.values() if r.outcome and r.outcome.cost_usd)
        if spent < budget:
            return False
        running = {b.id for spec in self.running.values() for b in spec.batches}
        left = [b.id for b in self.plan.batches if b.id not in self.results and b.id not in running]
        if left and not self.budget_exhausted:
            self.budget_exhausted = True
            self.journal.event(self.run_id, "budget_exhausted", spent=spent, budget=budget, not_started=left)
            self.emit("budget_exhausted", spent=spent, budget=budget, not_started=left)
        return True

    def _base_with(self, k: int, batch_id: str, deps: tuple[str, ...]) -> str | None:
        """The stream's head with the work of ``deps`` (on other streams) merged in, or None on a conflict."""
        head = self.heads[k]
        for d in deps:
            tip = self.results[d].commit
            assert tip is not None
            if gitops.is_ancestor(self.repo, tip, head):
                continue
            outcome = gitops.merge_commit(
                self.repo, head, tip,
                f"distpar: merge batch {d} into {self.branch(k)} for batch {batch_id}\n\nDistpar-Run: {self.run_id}\n",
                self.env,
            )
            if outcome.commit is None:
                src = self.branch(self.stream_of[d])
                self.conflict = self.conflict or Conflict(
                    "dependency", self.branch(k), src, outcome.conflicts, batch_id,
                    (f"git switch {self.branch(k)}", f"git merge --no-ff {tip}",
                     "# resolve the files above, then: git add <files> && git commit",
                     f"distpar resume {self.run_id}"),
                )
                self.journal.event(self.run_id, "conflict", k, batch_id, stage="dependency",
                                   files=list(outcome.conflicts), theirs=src)
                self._stop_stream(k, self.cursor[k], BatchStatus.BLOCKED,
                                  f"merging dependency {d} conflicts in {', '.join(outcome.conflicts)}")
                return None
            head = outcome.commit
        return head

    def _submit(self, ctx: RunContext, k: int, base: str, batch_ids: tuple[str, ...], attempt: int) -> None:
        seg = self.segments[k]
        self.segments[k] += 1
        spec = SegmentSpec(
            run_id=self.run_id,
            stream=k,
            segment=seg,
            branch=self.branch(k),
            base=base,
            batches=tuple(self._batch_spec(b) for b in batch_ids),
            source=self._source(base, k, seg),
            workspace=self.backend.workspace(ctx, k),
            log_dir=self.backend.log_dir(ctx),
            identity=self.identity,
            env=self.forwarded,
            return_bundle=self.backend.remote and not self.options.repo_url,
            attempt=attempt,
            agent_retries=self.options.agent_retries,
            max_concurrent_agents=self.options.max_concurrent_agents,
            stagger=self.options.stagger,
            hooks=self.options.hooks, warn_size=self.options.warn_size, sandbox=self.options.sandbox,
            sandbox_allow=self.options.sandbox_allow,
        )
        self.journal.event(self.run_id, "segment_submitted", k, batch_ids[0], batches=list(batch_ids),
                           attempt=attempt, base=base)
        self.emit("segment_submitted", stream=k, batches=list(batch_ids), attempt=attempt)
        for b in batch_ids:
            self.journal.batch_started(self.run_id, b, k, attempt, "")
            self.emit("batch_started", stream=k, batch=b, attempt=attempt)
        try:
            fut = self.backend.submit(spec)
        except DistparError as exc:
            fut = Future()
            fut.set_exception(exc)
        self.running[fut] = spec

    def _batch_spec(self, batch_id: str) -> BatchSpec:
        b = self.plan.batch(batch_id)
        cfg = agents.agent_config(b.agent, self.options.agent) if b.agent else self.options.agent
        session, restore = self.resume_sessions.get(batch_id, (None, None))
        if session and agents.can_resume(cfg):
            return BatchSpec(b.id, b.description, b.prompt(), cfg, b.timeout or self.options.timeout, session, restore)
        return BatchSpec(b.id, b.description, b.prompt(), cfg, b.timeout or self.options.timeout)

    def _source(self, base: str, k: int, seg: int) -> Source:
        if not self.backend.remote:
            return Source("worktree", str(self.repo))
        if self.options.repo_url:
            ref = f"refs/distpar/{self.run_id}/bases/s{k + 1}-{seg}"
            gitops.git(self.repo, "push", "--quiet", "--force", self.options.repo_url, f"{base}:{ref}")
            return Source("url", self.options.repo_url)
        bundles = self.run_dir / "bundles"
        bundles.mkdir(parents=True, exist_ok=True)
        full = bundles / "base.bundle"
        if self._bundle_base is None:
            gitops.update_ref(self.repo, f"refs/distpar/{self.run_id}/base", self.start)
            gitops.bundle_create(self.repo, full, [f"refs/distpar/{self.run_id}/base"])
            self._bundle_base = self.start
        if base == self.start:
            return Source("bundle", str(full))
        ref = f"refs/distpar/{self.run_id}/bases/s{k + 1}-{seg}"
        gitops.update_ref(self.repo, ref, base)
        inc = bundles / f"s{k + 1}-{seg}.bundle"
        gitops.bundle_create(self.repo, inc, [ref, f"^{self.start}"])
        return Source("bundle", str(full), (str(inc),))

    def _collect(self, ctx: RunContext, fut: Future[SegmentResult]) -> None:
        spec = self.running.pop(fut)
        try:
            result = fut.result()
        except Exception as exc:  # the transport failed, not the agent
            msg = exc.message if isinstance(exc, DistparError) else f"{type(exc).__name__}: {exc}"
            self.journal.event(self.run_id, "segment_error", spec.stream, spec.batches[0].id,
                               attempt=spec.attempt, error=msg)
            if spec.attempt <= self.options.retries and not self.interrupted.is_set():
                self.journal.event(self.run_id, "segment_retry", spec.stream, spec.batches[0].id,
                                   attempt=spec.attempt + 1, error=msg)
                self.emit("segment_retry", stream=spec.stream, attempt=spec.attempt + 1, error=msg)
                self.segments[spec.stream] -= 1
                self._submit(ctx, spec.stream, spec.base, tuple(b.id for b in spec.batches), spec.attempt + 1)
                return
            self.errors.append(f"stream s{spec.stream + 1}: {msg}")
            for b in spec.batches:
                self._record(BatchResult(b.id, spec.stream, BatchStatus.FAILED, error=msg, attempt=spec.attempt))
            self.stopped.add(spec.stream)
            return
        self._collect_result(spec, result)

    def _collect_result(self, spec: SegmentSpec, result: SegmentResult) -> None:
        if result.bundle or spec.source.kind == "url":
            self._fetch_back(result, spec.source)
        if result.saved_ref:
            self.saved_refs.append(result.saved_ref)
        self.heads[spec.stream] = result.head
        for r in result.results:
            self._record(r)
        self.cursor[spec.stream] += len(result.results)
        if not result.ok:
            self.stopped.add(spec.stream)
            if not result.interrupted:
                self._stop_stream(spec.stream, self.cursor[spec.stream], BatchStatus.SKIPPED,
                                  "an earlier batch of this stream failed")

    def _fetch_back(self, result: SegmentResult, source: Source) -> None:
        """Bring a remote stream's new commits (and saved work) into the coordinator's repository."""
        where = source.location if source.kind == "url" else result.bundle
        assert where
        saved = f"refs/distpar/{self.run_id}/saved"
        refspecs = [f"+{saved}/*:{saved}/*"]
        if result.head != result.base:  # a bundle of only saved work (nothing committed) has no branch ref
            refspecs.insert(0, f"+refs/heads/{result.branch}:refs/heads/{result.branch}")
        gitops.fetch(self.repo, where, refspecs)

    def _record(self, r: BatchResult) -> None:
        self.results[r.batch_id] = r
        self.journal.batch_ended(self.run_id, r)
        if r.tries > 1:  # the agent was tried again after transient failures: journal each try's class
            self.journal.event(self.run_id, "batch_tries", r.stream, r.batch_id, tries=r.tries,
                               classes=list(r.try_classes))
        self.emit("batch_ended", stream=r.stream, batch=r.batch_id, status=r.status.value, node=r.node,
                  duration=r.duration, error=r.error, log_tail=r.log_tail, changed=r.changed,
                  cost_usd=r.outcome.cost_usd if r.outcome else None, tries=r.tries, notes=list(r.notes))

    def _stop_stream(self, k: int, i: int, status: BatchStatus, why: str) -> None:
        ids = self.schedule.streams[k].batch_ids
        for n, b in enumerate(ids[i:]):
            st = status if n == 0 else BatchStatus.SKIPPED
            self._record(BatchResult(b, k, st, error=why if n == 0 else f"batch {ids[i]} of this stream was not run"))
        self.cursor[k] = len(ids)
        self.stopped.add(k)

    def _all_ok(self) -> bool:
        return (
            not self.interrupted.is_set()
            and not self.errors
            and len(self.results) == len(self.plan.batches)
            and all(r.status.ok for r in self.results.values())
        )

    def _merge(self) -> str | None:
        order = [(self.branch(s.index), self.heads[s.index]) for s in self.schedule.streams]
        self.journal.event(self.run_id, "merge_started", streams=[b for b, _ in order])
        self.emit("merge_started", streams=[b for b, _ in order])
        # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
        # resolved by hand there); streams it already contains are skipped by merge_streams.
        begin = gitops.try_rev(self.repo, f"refs/heads/{self.integration}")
        if begin is None or not gitops.is_ancestor(self.repo, self.start, begin):
            begin = self.start
        result = merge_streams(self.repo, begin, order, self.integration, self.run_id, self.env)
        conflict = result.conflict or land(
            self.repo, self.target, self.start, self.integration, result.head, self.env
        )
        if conflict:
            self.conflict = conflict
            self.journal.event(self.run_id, "conflict", stage=conflict.stage, files=list(conflict.files),
                               theirs=conflict.theirs, ours=conflict.ours)
            return None
        self.journal.event(self.run_id, "merged", head=result.head, merged=list(result.merged))
        return gitops.rev(self.repo, f"refs/heads/{self.target}")

    # --- cleanup and report ----------------------------------------------------------------------------

    def _cleanup(self, ctx: RunContext) -> None:
        """Remove worktrees (their work is committed or saved on a ref first) and, after a clean landing,
        the run's branches. Never deletes a ref that holds work that is not in the target."""
        if not self.backend.remote:
            done = []
            for s in self.schedule.streams:
                ws = Path(self.backend.workspace(ctx, s.index))
                if not ws.exists():
                    continue
                try:
                    snap = gitops.snapshot(ws, "distpar: uncommitted work found at cleanup", self.env) \
                        if gitops.out(ws, "status", "--porcelain") else None
                    if snap:
                        ref = f"refs/distpar/{self.run_id}/saved/s{s.index + 1}-cleanup"
                        gitops.update_ref(self.repo, ref, snap)
                        self.saved_refs.append(ref)
                except DistparError:
                    log.exception("could not snapshot %s; leaving it in place", ws)
                    continue
                done.append(ws)
            gitops.worktree_remove(self.repo, *done)
            paths.remove_worktrees_root(self.repo, self.run_id)
        for f in (self.run_dir / "bundles").glob("*.bundle"):
            f.unlink()

    def _report(self, t0: float, landed: str | None) -> RunReport:
        results = [self.results[b.id] for b in self.plan.batches if b.id in self.results]
        pending = [b.id for b in self.plan.batches if b.id not in self.results]
        codes = [ExitCode.OK]
        if any(not r.status.ok for r in results):
            codes.append(ExitCode.BATCH_FAILED)
        if self.conflict:
            codes.append(ExitCode.CONFLICT)
        if self.errors:
            codes.append(ExitCode.BACKEND)
        if self.interrupted.is_set():
            codes.append(ExitCode.INTERRUPTED)
        if self.budget_exhausted and pending:
            codes.append(ExitCode.BATCH_FAILED)
        code = most_severe(*codes)
        state = {
            ExitCode.OK: "ok", ExitCode.BATCH_FAILED: "failed", ExitCode.CONFLICT: "conflict",
            ExitCode.BACKEND: "error", ExitCode.INTERRUPTED: "interrupted",
        }[code]
        branches = [self.branch(s.index) for s in self.schedule.streams] + [self.integration]
        if landed is not None and self.conflict is None and not self.options.keep_branches:
            for b in branches:
                gitops.git(self.repo, "branch", "-D", "--quiet", b, check=False)
            for ref in gitops.refs(self.repo, f"refs/distpar/{self.run_id}/"):
                if "/saved/" not in ref:
                    gitops.delete_ref(self.repo, ref)
            branches = []
        else:
            branches = [b for b in branches if gitops.try_rev(self.repo, f"refs/heads/{b}")]
        return RunReport(
            run_id=self.run_id,
            state=state,
            exit_code=code,
            target=self.target,
            results=results,
            pending=pending,
            wall=time.time() - t0,
            conflict=self.conflict,
            errors=self.errors,
            branches=branches,
            saved_refs=sorted(set(self.saved_refs)),
            landed=landed,
            budget_usd=self.options.budget_usd,
            budget_exhausted=self.budget_exhausted,
        )

    def _run_row(self, t0: float) -> dict[str, Any]:
        opts = {
            "agent": self.options.agent.to_dict(),
            "timeout": self.options.timeout,
            "retries": self.options.retries,
            "keep_branches": self.options.keep_branches,
            "forward_env": list(self.options.forward_env),  # names only, never values
            "budget_usd": self.options.budget_usd,
            "agent_retries": self.options.agent_retries,
            "max_concurrent_agents": self.options.max_concurrent_agents,
            "stagger": self.options.stagger,
            "hooks": self.options.hooks, "warn_size": self.options.warn_size, "sandbox": self.options.sandbox,
            "sandbox_allow": list(self.options.sandbox_allow),
            "repo_url": self.options.repo_url,
            "into": self.options.into,
            "backend_options": {k: (str(v) if isinstance(v, Path) else v)
                                for k, v in self.options.backend_options.items()},
        }
        return {
            "id": self.run_id,
            "plan_path": self.options.plan_path or self.plan.source,
            "plan_id": self.plan.plan_id,
            "repo": str(self.repo),
            "target": self.target,
            "base": self.start,
            "backend": self.backend.name,
            "workers": self.schedule.workers,
            "strategy": self.schedule.strategy,
            "state": "running",
            "started": t0,
            "pid": os.getpid(),
            "plan": json.dumps(self.plan.to_dict()),
            "schedule": json.dumps(self.schedule.to_dict()),
            "options": json.dumps(opts),
        }

    # --- resume ----------------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Pick up a journaled run: finished batches are kept (also those whose commit reached their branch
        before the coordinator died), everything else runs again from the stream's last good commit."""
        kill_run_processes(self.run_id)  # agents orphaned by a coordinator that was killed
        gitops.worktree_prune(self.repo)
        rows = {r["batch_id"]: r for r in self.journal.batches(self.run_id)}
        recovered: dict[str, str] = {}
        for s in self.schedule.streams:
            tip = gitops.try_rev(self.repo, f"refs/heads/{self.branch(s.index)}")
            if tip is None:
                continue
            self.heads[s.index] = tip
            for bid, commit in committed_batches(self.repo, self.start, tip, self.run_id).items():
                if rows.get(bid, {}).get("state") != "ok":
                    recovered[bid] = commit
        for bid, row in rows.items():
            # An interrupted agent session is continued (where the agent can) with its saved work put back.
            if row["state"] == "interrupted" and row["session_id"] and bid not in recovered:
                saved = gitops.try_rev(self.repo, f"refs/distpar/{self.run_id}/saved/{safe_name(bid)}")
                self.resume_sessions[bid] = (row["session_id"], saved)
        resumes = sum(1 for e in self.journal.events(self.run_id) if e.kind == "run_resumed") + 1
        self.journal.resume_run(self.run_id, os.getpid(), recovered)
        for bid, row in rows.items():
            if row["state"] == "ok" or bid in recovered:
                self.results[bid] = BatchResult(
                    bid, row["stream"], BatchStatus.OK, row["exit_code"], row["started"], row["ended"],
                    recovered.get(bid) or row["commit_oid"], bool(row["changed"]) or bid in recovered,
                    None, row["log_path"], "", "", row["node"] or "", row["attempt"] or 1,
                )
        for s in self.schedule.streams:
            done = 0
            while done < len(s.batch_ids) and s.batch_ids[done] in self.results:
                done += 1
            self.cursor[s.index] = done
            self.segments[s.index] = 100 * resumes  # keeps bundle and ref names of this attempt unique
        self.saved_refs.extend(gitops.refs(self.repo, f"refs/distpar/{self.run_id}/saved/"))
        self.emit("run_resumed", run_id=self.run_id, done=len(self.results), recovered=sorted(recovered),
                  done_batches=sorted(self.results))

    # --- signals ---------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Safe from a signal handler: only sets flags (the loop journals it)."""
        if not self.interrupted.is_set():
            self.interrupted.set()
            self.backend.cancel()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: self.interrupt())
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

