"""Carries out a Schedule: dispatch segments to a backend, merge dependencies into bases, retry broken
transports, journal every step, merge the streams in order, clean up. The only module with effects on the
coordinator's repository (through gitops and merge)."""

from __future__ import annotations

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

from distpar import agents, gitops
from distpar.backends.base import Backend, RunContext
from distpar.errors import DistparError, ExitCode, NestedRunError, RepoError, most_severe
from distpar.journal import Journal
from distpar.merge import Conflict, land, merge_streams
from distpar.model import (
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
from distpar.schedule import Schedule

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
    retries: int = 0
    forward_env: tuple[str, ...] = ()
    backend: str = "local"
    plan_path: str = ""
    repo_url: str | None = None  # remote workers clone from and push to this remote instead of bundles


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
        }


def state_dir(repo: Path) -> Path:
    home = os.environ.get("DISTPAR_HOME")
    return Path(home) if home else gitops.common_dir(repo) / "distpar"


def open_journal(repo: Path) -> Journal:
    return Journal(state_dir(repo) / "journal.db")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def preflight(repo_path: str | Path, options: RunOptions) -> tuple[Path, str, str]:
    """Refuse to start on bad ground. Returns (repo root, target branch, its commit). Changes nothing."""
    if os.environ.get(agents.GUARD_VAR):
        raise NestedRunError(
            f"distpar is running inside an agent that distpar started ({agents.GUARD_VAR} is set); "
            "a nested run is refused"
        )
    gitops.check_version()
    repo = gitops.repo_root(repo_path)
    if not gitops.has_commits(repo):
        raise RepoError(f"{repo} has no commits yet: commit something first (distpar branches from a commit)")
    target = options.into or gitops.current_branch(repo)
    if not target:
        raise RepoError("HEAD is detached: check out the branch to merge into, or name it with --into BRANCH")
    start = gitops.try_rev(repo, f"refs/heads/{target}")
    if start is None:
        raise RepoError(f"--into {target}: no such branch")
    dirty = gitops.dirty_files(repo)
    if dirty and not options.allow_dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise RepoError(
            f"the working tree has uncommitted changes ({shown})",
            hint="commit or stash them first, or pass --allow-dirty (the streams start from the last commit)",
        )
    for var in options.forward_env:
        if var not in os.environ:
            raise RepoError(f"--forward-env {var}: the variable is not set here")
    return repo, target, start


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
        self.cursor = {s.index: 0 for s in schedule.streams}
        self.segments = {s.index: 0 for s in schedule.streams}
        self.stopped: set[int] = set()
        self.running: dict[Future[SegmentResult], SegmentSpec] = {}
        self.conflict: Conflict | None = None
        self.errors: list[str] = []
        self.saved_refs: list[str] = []
        self.interrupted = threading.Event()
        self._started_batches: set[str] = set()
        self._bundle_base: str | None = None

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
        self.journal.start_run(self._run_row(t0), [(b.id, self.schedule.stream_of(b.id)) for b in self.plan.batches])
        self.emit("run_started", run_id=self.run_id, streams=len(self.schedule.streams), target=self.target)
        ctx = RunContext(self.run_id, self.repo, self.run_dir, len(self.schedule.streams))
        old = self._install_signals()
        try:
            try:
                self.backend.start(ctx)
            except DistparError as exc:
                self.errors.append(exc.message)
            else:
                self._loop(ctx)
            finally:
                self.backend.close()
            landed = None
            if self._all_ok():
                landed = self._merge()
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

    def _dispatch_ready(self, ctx: RunContext) -> None:
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
            j = i + 1
            while j < len(stream.batch_ids) and not self.schedule.waits.get(stream.batch_ids[j]):
                j += 1
            self._submit(ctx, k, base, stream.batch_ids[i:j], attempt=1)

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
                src = self.branch(self.schedule.stream_of(d))
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
        gitops.fetch(self.repo, where, [
            f"+refs/heads/{result.branch}:refs/heads/{result.branch}", f"+{saved}/*:{saved}/*"])

    def _record(self, r: BatchResult) -> None:
        self.results[r.batch_id] = r
        self.journal.batch_ended(self.run_id, r)
        self.emit("batch_ended", stream=r.stream, batch=r.batch_id, status=r.status.value,
                  duration=r.duration, error=r.error, log_tail=r.log_tail, changed=r.changed,
                  cost_usd=r.outcome.cost_usd if r.outcome else None)

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
        result = merge_streams(self.repo, self.start, order, self.integration, self.run_id, self.env)
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
            for s in self.schedule.streams:
                ws = Path(self.backend.workspace(ctx, s.index))
                if not ws.exists():
                    continue
                try:
                    snap = gitops.snapshot(ws, "distpar: uncommitted work found at cleanup", self.env)
                    if snap:
                        ref = f"refs/distpar/{self.run_id}/saved/s{s.index + 1}-cleanup"
                        gitops.update_ref(self.repo, ref, snap)
                        self.saved_refs.append(ref)
                except DistparError:
                    log.exception("could not snapshot %s; leaving it in place", ws)
                    continue
                gitops.worktree_remove(self.repo, ws)
        for f in (self.run_dir / "bundles").glob("*.bundle"):
            f.unlink()

    def _landed_cleanly(self, landed: str | None) -> bool:
        return landed is not None and self.conflict is None

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
        code = most_severe(*codes)
        state = {
            ExitCode.OK: "ok", ExitCode.BATCH_FAILED: "failed", ExitCode.CONFLICT: "conflict",
            ExitCode.BACKEND: "error", ExitCode.INTERRUPTED: "interrupted",
        }[code]
        branches = [self.branch(s.index) for s in self.schedule.streams] + [self.integration]
        if self._landed_cleanly(landed) and not self.options.keep_branches:
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
        )

    def _run_row(self, t0: float) -> dict[str, Any]:
        import json

        opts = {
            "agent": self.options.agent.to_dict(),
            "timeout": self.options.timeout,
            "retries": self.options.retries,
            "keep_branches": self.options.keep_branches,
            "forward_env": list(self.options.forward_env),  # names only, never values
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

    # --- signals ---------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Safe from a signal handler: only sets flags (the loop journals it)."""
        if not self.interrupted.is_set():
            self.interrupted.set()
            self.backend.cancel()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: self.interrupt())
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

