"""Carries out a run: feeds what happens (workers up, units ended, transports broken, Ctrl+C) to the pure
``RunState`` and does what it says (a unit's base, ship it, submit it, journal, merge), with effects on the
coordinator's repository only through gitops, deps, transfer and landing. Every unit commits on a branch of its
own (``distpar/<run>/b/<unit>``) from the merge of exactly its dependencies, and the final merge takes the units
in plan order: which worker ran a unit (journaled) changes nothing in the result, so when nothing conflicts the
landed tree is the same whatever the timing, and resume needs no replay of the assignment."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from distpar import names, workspace
from distpar.backends.base import Backend, RunContext
from distpar.deps import EarlyConflicts, Found, Preview, base_for
from distpar.errors import DistparError
from distpar.journal import Journal
from distpar.landing import cleanup, land_run
from distpar.logs import LiveLogs
from distpar.merge import Conflict
from distpar.model import BatchResult, BatchStatus, SegmentResult, SegmentSpec
from distpar.plan import Plan
from distpar.process import on_signals
from distpar.ratelimit import RateLimiter
from distpar.runtime import (
    Observer,
    RunLock,
    RunOptions,
    RunReport,
    git_identity,
    make_report,
    new_run_id,
    run_row,
    state_dir,
)
from distpar.schedule import Schedule
from distpar.state import (
    Blocked,
    BudgetSpent,
    CancelAll,
    Event,
    Instruction,
    Interrupt,
    Record,
    Retry,
    RunState,
    Start,
    Throttle,
    Tick,
    UnitEnded,
    UnitLost,
    WorkerUp,
)
from distpar.stateunits import state_units
from distpar.transfer import Transfer
from distpar.units import unit_graph
from distpar.unitspec import batch_spec, note_owned_files, segment_spec, verify_files, with_earlier_tries
from distpar.worker import retry_base

log = logging.getLogger(__name__)

CANCEL_WAIT = 30.0  # how long an interrupted run waits for its units to save their work
TICK = 0.2


class Runner:
    """One run of a plan. ``run()`` returns a RunReport; it raises only for errors before anything started."""

    def __init__(self, repo: Path, plan: Plan, schedule: Schedule, options: RunOptions, backend: Backend,
                 journal: Journal, target: str, start: str, observer: Observer | None = None,
                 run_id: str | None = None, resume: bool = False) -> None:
        self.repo, self.plan, self.schedule, self.options = repo, plan, schedule, options
        self.backend, self.journal, self.target, self.start = backend, journal, target, start
        self.observer = observer or (lambda kind, data: None)
        self.run_id = run_id or new_run_id()
        self.run_dir = state_dir(repo) / "runs" / self.run_id
        self.identity = git_identity(repo)
        self.env = self.identity.env()
        self.forwarded = {k: os.environ[k] for k in options.forward_env}
        self.graph = unit_graph(plan, independent=options.independent, strategy=schedule.strategy,
                                split=options.split)
        self.workers = 2 if self.graph.rule == "midpoint" else max(1, schedule.workers)
        self.units = state_units(self.graph, schedule.strategy, self.workers)
        self.batches = {b.id: b for b in plan.batches}
        self.empty = [b.id for b in plan.batches if not b.agents]  # agents: [] - recorded as skipped
        # What the journal and the report list, in plan order: each batch's units (or the empty batch itself).
        self.order = [x for b in plan.batches for x in ([u.uid for u in self.graph.of_batch(b.id)] or [b.id])]
        self.results: dict[str, BatchResult] = {}
        self.running: dict[str, tuple[SegmentSpec, Future[SegmentResult]]] = {}
        self.conflict: Conflict | None = None
        self.predicted: list[dict[str, Any]] = []  # conflicts found early, before the final merge
        self.errors: list[str] = []
        self.saved_refs: list[str] = []
        self.interrupted = threading.Event()
        self.budget_exhausted = False
        self.resumed = resume
        # unit -> (agent session, commit of its saved work, node the session lives on)
        self.resume_sessions: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.dispatches = 0
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.transfer = Transfer(repo, self.run_id, self.run_dir, start, backend.remote, options.repo_url)
        self.preview = Preview(repo, start, self.env, start)
        self.early = EarlyConflicts(self.preview, lambda uid, found: self._queue.put(("predicted", (uid, found))),
                                    inline=options.stop_on_conflict)
        self.state: RunState | None = None
        self.include = workspace.included_files(repo)
        self.include_data = workspace.pack_files(repo, self.include) \
            if backend.remote and options.ship_included else {}
        self.gate: workspace.HookResult | None = None
        self.requeues: dict[str, int] = {}  # unit -> times it went back to the queue after a rate limit
        self.carried: dict[str, list[BatchResult]] = {}  # ... and what those dispatches reported
        self.rate_stop = ""  # why no new unit started (a usage limit far away), when that happened
        try:
            self.plan_text = Path(options.plan_path or plan.source).read_text()
        except OSError:
            self.plan_text = ""
        self.pushed: list[str] = []
        self.lock: RunLock | None = None  # one coordinator per run (resume hands in the lock it took)
        self.landing = self.interrupted_while_landing = False  # an interrupt while landing lets it finish
        self.live = LiveLogs(self.run_dir, backend.remote)  # what remote units print, for logs --follow

    def saved_ref(self, uid: str) -> str:
        """Where a unit's unfinished work is kept when it fails or is interrupted."""
        return f"refs/distpar/{self.run_id}/saved/{names.key(uid)}"

    def branch(self, uid: str) -> str:
        return f"distpar/{self.run_id}/b/{names.key(uid)}"

    @property
    def integration(self) -> str:
        return f"distpar/{self.run_id}/integration"

    def publish(self, kind: str, stream: int | None = None, batch: str | None = None, **data: Any) -> None:
        """One event, once, to everything that follows the run: the journal, and the observer (live view,
        ``--json``), which gets ``stream``/``batch`` in its data."""
        self.journal.event(self.run_id, kind, stream, batch, **data)
        self.emit(kind, **({"stream": stream} if stream is not None else {}),
                  **({"batch": batch} if batch is not None else {}), **data)

    def emit(self, kind: str, **data: Any) -> None:
        try:
            self.observer(kind, data)
        except Exception:  # an observer must never break a run
            log.exception("observer failed on %s", kind)

    # --- the run ---------------------------------------------------------------------------------------

    def run(self) -> RunReport:
        self.lock = self.lock or RunLock(self.run_dir, self.run_id).acquire()
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> RunReport:
        t0 = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resumed:
            from distpar.resume import restore

            restore(self)
        else:
            self.journal.start_run(run_row(self, t0), [(uid, 0) for uid in self.order])
        self.emit("run_started", run_id=self.run_id, streams=self.workers, workers=self.workers, target=self.target)
        for bid in self.empty:
            self._record(BatchResult(bid, -1, BatchStatus.SKIPPED, error="the batch has no agents (agents: [])"))
        done = {uid: r.status for uid, r in self.results.items() if r.status.ok and uid not in self.empty}
        ceiling = min(self.workers, self.options.max_concurrent_agents or self.workers)
        self.state = RunState.create(self.units, done, retries=self.options.retries,
                                     budget_usd=self.options.budget_usd,
                                     stop_on_conflict=self.options.stop_on_conflict,
                                     limiter=RateLimiter(ceiling=max(1, ceiling), default_pause=3 * retry_base()))
        for uid, st in done.items():  # finished work is part of the preview from the start
            commit = self.results[uid].commit
            if st.ok and commit:
                self.preview.add(uid, commit)
        agents_used = tuple(dict.fromkeys(batch_spec(self, u.uid).agent for u in self.units))
        ctx = RunContext(self.run_id, self.repo, self.run_dir, self.workers, agents_used,  # events: from any thread
                         lambda kind, data: self._queue.put(("worker", (kind, data))))
        restore_signals = on_signals(self.interrupt)
        landed = None
        try:
            try:
                self.backend.start(ctx)
                self._loop()
            except DistparError as exc:  # git or a transport broke under the coordinator: stop, keep everything
                self.errors.append(exc.message)
                self._drain()
            finally:
                self.backend.close()
                self._settle_predictions()
            if self.state.complete and not self.errors and not self.interrupted.is_set():
                self.landing = True
                try:
                    landed = land_run(self)
                except DistparError as exc:
                    self.errors.append(exc.message)
                finally:
                    self.landing = False
                if self.interrupted_while_landing:
                    self.publish("interrupt_while_landing", landed=landed)
        finally:
            restore_signals()
            self.backend.wait_closed()
            cleanup(self)
        report = make_report(self, time.time() - t0, landed)
        self.journal.end_run(self.run_id, report.state, int(report.exit_code), report.summary())
        self.emit("run_ended", **report.summary())
        return report

    def _loop(self) -> None:
        assert self.state is not None
        for w in range(self.workers):
            self._apply(self.state.handle(WorkerUp(w)))
        interrupted_at: float | None = None
        while not self.state.finished:
            try:
                kind, item = self._queue.get(timeout=TICK)
            except queue.Empty:
                kind, item = "event", Tick(time.time())
            if self.interrupted.is_set() and not self.state.interrupted:
                interrupted_at = time.time()
                self.publish("interrupted")
                self._apply(self.state.handle(Interrupt()))
            if kind == "done":
                event = self._collect(*item)
            elif kind in ("worker", "predicted"):
                (self._on_worker_event if kind == "worker" else self._predicted)(*item)
                continue
            else:
                event = item
            self._apply(self.state.handle(event))
            if interrupted_at is not None and time.time() - interrupted_at > CANCEL_WAIT and self.running:
                self.errors.append(f"{len(self.running)} unit(s) did not stop within {CANCEL_WAIT:g}s")
                break

    def _apply(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Start):
                self._start(ins)
            elif isinstance(ins, Record):
                worker = self.state.assignment.get(ins.uid, -1) if self.state else -1
                self._record(BatchResult(ins.uid, worker, ins.status, error=ins.reason))
            elif isinstance(ins, Retry):
                self.publish("segment_retry", None, ins.uid, attempt=ins.attempt, error=ins.error)
            elif isinstance(ins, CancelAll):
                self.backend.cancel()
            elif isinstance(ins, BudgetSpent):
                self.budget_exhausted = True
                self.publish("budget_exhausted", spent=ins.spent, budget=self.options.budget_usd,
                             not_started=list(ins.not_started))
            elif isinstance(ins, Throttle):
                self.publish("throttled", limit=ins.limit, until=ins.until, stop=ins.stop, reason=ins.reason)
                if ins.stop:
                    self.rate_stop = ins.reason

    def _start(self, ins: Start) -> None:
        unit = self.state.units[ins.uid] if self.state else None
        assert unit is not None
        deps = [(d, self.results[d].commit or self.start) for d in unit.deps]
        deps.sort(key=lambda dc: self.state.units[dc[0]].order if self.state else 0)
        base = base_for(self.repo, self.start, ins.uid, deps, self.branch(ins.uid), self.branch, self.run_id,
                        self.env)
        if base.commit is None:
            assert base.conflict is not None
            self.conflict = self.conflict or base.conflict
            self.journal.event(self.run_id, "conflict", ins.worker, ins.uid, stage="dependency",
                               files=list(base.conflict.files), theirs=base.conflict.theirs)
            reason = f"merging its dependencies conflicts in {', '.join(base.conflict.files)}"
            self._record(BatchResult(ins.uid, ins.worker, BatchStatus.BLOCKED, error=reason))
            self._queue.put(("event", Blocked(ins.uid, ins.worker, reason)))
            return
        self.dispatches += 1
        spec = segment_spec(self, ins.uid, ins.worker, ins.attempt, base.commit)
        self.publish("segment_submitted", ins.worker, ins.uid, batches=[ins.uid], attempt=ins.attempt, base=base.commit)
        self.journal.batch_started(self.run_id, ins.uid, ins.worker, ins.attempt, "")
        self.emit("batch_started", stream=ins.worker, batch=ins.uid, attempt=ins.attempt)
        try:
            fut = self.backend.submit(spec)
        except DistparError as exc:
            fut = Future()
            fut.set_exception(exc)
        self.running[ins.uid] = (spec, fut)
        fut.add_done_callback(lambda f: self._queue.put(("done", (spec, f))))

    def _predicted(self, uid: str, found: Found) -> None:
        """A conflict found early: journaled and shown at once."""
        files, others = list(found[0]), list(found[1])
        self.predicted.append({"unit": uid, "files": files, "with": others})
        self.publish("conflict_predicted", None, uid, files=files, others=others)

    def _settle_predictions(self) -> None:
        """The early checks handed over finish, and what they found is published, before the final merge."""
        self.early.settle()
        while True:
            try:
                kind, item = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == "predicted":  # what is left besides is late: every unit has ended
                self._predicted(*item)

    def _ctx_stub(self) -> RunContext:
        return RunContext(self.run_id, self.repo, self.run_dir, self.workers)

    def _collect(self, spec: SegmentSpec, fut: Future[SegmentResult]) -> Event:
        uid = spec.batches[0].id
        self.running.pop(uid, None)
        try:
            result = fut.result()
        except Exception as exc:  # the transport failed, not the agent
            msg = exc.message if isinstance(exc, DistparError) else f"{type(exc).__name__}: {exc}"
            self.journal.event(self.run_id, "segment_error", spec.stream, uid, attempt=spec.attempt, error=msg)
            return UnitLost(uid, spec.stream, msg)
        self.transfer.fetch_back(result, spec.source)
        if result.setup:
            setup = result.setup
            self.publish("workspace_setup", spec.stream, uid, ok=setup["ok"], seconds=round(setup["seconds"], 3),
                         exit_code=setup["exit_code"], node=result.node)
        if result.saved_ref:
            self.saved_refs.append(result.saved_ref)
        r = note_owned_files(self, verify_files(self, result.results[0]), spec.base)
        o = r.outcome
        now = time.time()
        if o is not None and o.rate_limited and not o.ok and not self.interrupted.is_set():
            # A rate limit is the run's signal, not the unit's failure: it goes back to the queue and starts again
            # when the run's limiter lets it (a few times at most), from the same base.
            self.requeues[uid] = self.requeues.get(uid, 0) + 1
            if self.requeues[uid] <= self.options.agent_retries:
                self.carried.setdefault(uid, []).append(r)
                self.journal.batch_requeued(self.run_id, uid)
                self.publish("unit_throttled", spec.stream, uid, result_class=o.result_class, retry_after=o.retry_after,
                             resets_at=o.resets_at, requeued=self.requeues[uid])
                return UnitEnded(uid, spec.stream, r.status, o.cost_usd, outcome=o, at=now, requeue=True)
        if uid in self.carried:  # what the dispatches before it (rate-limited) tried and cost counts too
            r = with_earlier_tries(self.carried.pop(uid), r)
        self._record(r)
        found = self.early.check(uid, r.commit) if r.status.ok and r.commit and r.changed else None
        if found is not None:
            self._predicted(uid, found)
        conflicts = found is not None
        return UnitEnded(uid, spec.stream, r.status, o.cost_usd if o else None, outcome=o, at=now,
                         conflicts=conflicts)

    def _on_worker_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "unit_started" and data.get("batch") in self.running:
            spec, _ = self.running[data["batch"]]
            self.journal.unit_started(self.run_id, data["batch"], spec.stream, spec.attempt, data.get("node", ""),
                                      data.get("at") or time.time())
        elif kind == "transport_stalled":  # a transport's watch gave up on a unit: journaled with its host
            rest = {k: v for k, v in data.items() if k not in ("worker", "unit")}
            self.journal.event(self.run_id, kind, data.get("worker"), data.get("unit"), **rest)
        self.live.update(kind, data)  # agent_output: never journaled, see LiveLogs
        self.emit(kind, **data)

    def _drain(self) -> None:
        """After an error: stop the running units and take in what they hand back (bounded)."""
        if not self.running:
            return
        self.backend.cancel()
        deadline = time.time() + CANCEL_WAIT
        while self.running and time.time() < deadline:
            try:
                kind, item = self._queue.get(timeout=TICK)
            except queue.Empty:
                continue
            if kind == "done":
                try:
                    self._collect(*item)
                except Exception:
                    log.exception("a unit failed while the run stopped after an error")

    def _record(self, r: BatchResult) -> None:
        self.live.ended(r.batch_id, landed=bool(r.log_path))  # a log_path: the backend landed the unit's full log
        self.results[r.batch_id] = r
        self.journal.batch_ended(self.run_id, r)
        if r.tries > 1:  # the agent was tried again after transient failures: journal each try's class
            self.journal.event(self.run_id, "batch_tries", r.stream, r.batch_id, tries=r.tries,
                               classes=list(r.try_classes))
        self.emit("batch_ended", stream=r.stream, batch=r.batch_id, status=r.status.value, node=r.node,
                  duration=r.duration, error=r.error, log_tail=r.log_tail, changed=r.changed,
                  cost_usd=r.outcome.cost_usd if r.outcome else None, tries=r.tries, notes=list(r.notes))

    # --- signals ---------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Safe from a signal handler: only sets flags (the loop journals it). Once every unit is done and the
        merge has begun, the merge and landing finish: they are quick, and stopping them half way would only
        leave a half-made integration branch."""
        if self.landing:
            self.interrupted_while_landing = True
            return
        if not self.interrupted.is_set():
            self.interrupted.set()
            self.backend.cancel()
