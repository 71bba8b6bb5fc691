"""Carries out a run: feeds what happens (workers up, units ended, transports broken, Ctrl+C) to the pure
``RunState`` and does what it says (a unit's base, ship it, submit it, journal, merge), with effects on the
coordinator's repository only through gitops, deps, transfer and landing. Every unit commits on a branch of its
own (``distpar/<run>/b/<unit>``) from the merge of exactly its dependencies, and the final merge takes the units
in plan order: which worker ran a unit (journaled) changes nothing in the result, so when nothing conflicts the
landed tree is the same whatever the timing, and resume needs no replay of the assignment."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from distpar.backends.base import Backend, RunContext
from distpar.coordinator import mergequeue, resolve
from distpar.coordinator import options as run_options
from distpar.coordinator.deps import EarlyConflicts, Found, Preview, base_for
from distpar.coordinator.fixunit import FixUnit, run_fix
from distpar.coordinator.journal import Journal
from distpar.coordinator.landing import Landed, land_run, release
from distpar.coordinator.livelogs import LiveLogs
from distpar.coordinator.merge import Conflict, changed_paths
from distpar.coordinator.options import RunOptions
from distpar.coordinator.recovery import earlier_wall, recover, users_branch_back
from distpar.coordinator.removal import cleanup, give_back
from distpar.coordinator.runtime import RunLock, RunReport, exit_code, git_identity, new_run_id
from distpar.coordinator.site import Observer, RunEvents, RunSite
from distpar.coordinator.unitspec import (
    continued_session,
    note_owned_files,
    unit_agent,
    unit_prompt,
    verify_files,
    with_earlier_tries,
)
from distpar.core import names
from distpar.core.errors import DistparError, ExitCode
from distpar.core.model import AgentConfig, UnitReply, UnitResult, UnitSpec, UnitStatus, WorkerSettings
from distpar.core.plan import Plan
from distpar.core.ratelimit import RateLimiter, retry_base
from distpar.core.schedule import Schedule
from distpar.core.state import (
    Blocked,
    BudgetSpent,
    CancelAll,
    Event,
    GiveUp,
    Instruction,
    Interrupt,
    Record,
    Requeue,
    Rerun,
    Retry,
    RunState,
    Start,
    StopWaiting,
    Throttle,
    Tick,
    UnitEnded,
    UnitLost,
    WorkerUp,
)
from distpar.core.stateunits import state_units
from distpar.core.units import unit_graph
from distpar.infra import gitops, workspace
from distpar.infra.paths import state_dir
from distpar.infra.process import on_signals
from distpar.infra.transfer import Inflow, Transfer

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
        self.run_id = run_id or new_run_id()
        self.run_dir = state_dir(repo) / "runs" / self.run_id
        self.identity = git_identity(repo)
        self.env = self.identity.env()
        self.site = RunSite(repo, self.run_id, self.run_dir, start, target, self.env)
        self.events = RunEvents(journal, self.run_id, observer)
        self.forwarded = {k: os.environ[k] for k in options.forward_env}
        self.graph = unit_graph(plan, independent=options.independent, strategy=schedule.strategy,
                                split=options.split)
        self.workers = 2 if self.graph.rule == "midpoint" else max(1, schedule.workers)
        self.units = state_units(self.graph, schedule.strategy, self.workers)
        self.batches = {b.id: b for b in plan.batches}
        self.empty = [b.id for b in plan.batches if not b.agents]  # agents: [] - recorded as skipped
        # What the journal and the report list, in plan order: each batch's units (or the empty batch itself).
        self.order = [x for b in plan.batches for x in ([u.uid for u in self.graph.of_batch(b.id)] or [b.id])]
        self.results: dict[str, UnitResult] = {}
        self.running: dict[str, tuple[UnitSpec, Future[UnitReply]]] = {}
        self.conflict: Conflict | None = None
        self.predicted: list[dict[str, Any]] = []  # conflicts found early, before the final merge
        self.errors: list[str] = []
        self.saved_refs: list[str] = []
        self.interrupted = threading.Event()
        self.stop_landing = threading.Event()  # Ctrl+C while landing stops an agent resolving or a gate's search
        self.budget_exhausted = False
        self.resumed = resume
        self.earlier_wall = 0.0  # the wall time of the attempts before this resume
        # unit -> (agent session, commit of its saved work, node the session lives on)
        self.resume_sessions: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.dispatches = 0
        self.worker_settings: dict[int, WorkerSettings] = {}  # each worker's, made once (see _settings)
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.transfer = Transfer(repo, self.run_id, self.run_dir, start, backend.remote, options.repo_url)
        self.inflow = Inflow(self.transfer.fetch_back, lambda spec, f, err: self._queue.put(("done", (spec, f, err))))
        self.preview = Preview(repo, start, self.env, start, ref=f"refs/distpar/{self.run_id}/preview/head")
        self.early = EarlyConflicts(self.preview, lambda uid, found: self._queue.put(("predicted", (uid, found))),
                                    inline=options.stop_on_conflict or options.on_conflict == "rerun")
        self.state: RunState | None = None
        self.include = workspace.included_files(repo)
        self.include_data = workspace.pack_files(repo, self.include) \
            if backend.remote and options.ship_included else {}
        self.gate: workspace.HookResult | None = None
        self.fixes: list[dict[str, Any]] = []  # --on-verify-fail fix: each fix unit's end
        self.review: str | None = None  # --review: the integrated head waiting for ``distpar land``
        self.bisected: dict[str, Any] | None = None  # the first unit whose merge fails the gate (landing.Bisected)
        self.held: dict[str, UnitResult] = {}  # a rate-limited unit's report, until the state says what it means
        self.carried: dict[str, list[UnitResult]] = {}  # what a unit's requeued (rate-limited) dispatches reported
        self.rate_stop = ""  # why no new unit started (a usage limit far away), when that happened
        try:
            self.plan_text = Path(options.plan_path or plan.source).read_text()
        except OSError:
            self.plan_text = ""
        self.pushed: list[str] = []
        self.warnings: list[str] = []  # what the checks before the run found worth saying (prepare_run)
        self.lock: RunLock | None = None  # one coordinator per run (resume hands in the lock it took)
        self.landing = self.interrupted_while_landing = False  # an interrupt while landing lets it finish
        self.live = LiveLogs(self.run_dir, backend.remote)  # what remote units print, for logs --follow
        self.bases: dict[str, str] = {}  # uid -> the base its latest dispatch ran from
        self.queued: dict[str, mergequeue.Queued] = {}  # the merge queue (--on-conflict rerun): why, earlier try
        self.reruns: list[dict[str, Any]] = []  # every rerun decided in this run, for the report
        self.resolutions: list[dict[str, Any]] = []  # --on-conflict resolve: each resolution tried

    @property
    def observer(self) -> Observer:
        return self.events.observer

    @observer.setter
    def observer(self, value: Observer) -> None:
        self.events.observer = value

    def saved_ref(self, uid: str) -> str:
        return self.site.saved_ref(uid)

    def branch(self, uid: str) -> str:
        return self.site.branch(uid)

    @property
    def integration(self) -> str:
        return self.site.integration

    def publish(self, kind: str, worker: int | None = None, unit: str | None = None, **data: Any) -> None:
        self.events.publish(kind, worker, unit, **data)

    def emit(self, kind: str, **data: Any) -> None:
        self.events.emit(kind, **data)

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
            self._restore()
        else:
            self.journal.start_run(self._row(t0), [(uid, 0) for uid in self.order])
        self.emit("run_started", run_id=self.run_id, workers=self.workers, target=self.target)
        for bid in self.empty:
            self._record(UnitResult(bid, -1, UnitStatus.SKIPPED, error="the batch has no agents (agents: [])"))
        done = {uid: r.status for uid, r in self.results.items() if r.status.ok and uid not in self.empty}
        ceiling = min(self.workers, self.options.max_concurrent_agents or self.workers)
        self.state = RunState.create(self.units, done, retries=self.options.retries,
                                     budget_usd=self.options.budget_usd,
                                     stop_on_conflict=self.options.stop_on_conflict,
                                     spent=(self.journal.spent(self.run_id) or 0.0) if self.resumed else 0.0,
                                     agent_retries=self.options.agent_retries, cancel_wait=CANCEL_WAIT,
                                     on_conflict=self.options.on_conflict, max_reruns=self.options.max_reruns,
                                     queued={u: (q.count, q.holds or q.files) for u, q in self.queued.items()},
                                     limiter=RateLimiter(ceiling=max(1, ceiling), default_pause=3 * retry_base()))
        finished = {uid: c for uid, st in done.items() if st.ok and (c := self.results[uid].commit)}
        if finished:  # finished work is part of the preview from the start
            paths = changed_paths(self.repo, [(c, self.start) for c in finished.values()])
            for uid, commit in finished.items():
                self.preview.add(uid, commit, paths.get(commit, set()))
        agents_used = tuple(dict.fromkeys(self._agent(u.uid) for u in self.units))
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
                self.inflow.close()
                self._settle_predictions()
            if self.state.complete and not self.errors and not self.interrupted.is_set():
                self.landing = True
                try:
                    landed = self._land()
                except DistparError as exc:
                    self.errors.append(exc.message)
                finally:
                    self.landing = False
                if self.interrupted_while_landing:
                    self.publish("interrupt_while_landing", landed=landed)
        finally:
            restore_signals()
            self.backend.wait_closed()
            self._cleanup()
        report = self._report(time.time() - t0 + self.earlier_wall, landed)  # a resume: the whole run's wall
        self.journal.end_run(self.run_id, report.state, int(report.exit_code), report.summary())
        self.emit("run_ended", **report.summary())
        return report

    def _loop(self) -> None:
        assert self.state is not None
        for w in range(self.workers):
            self._apply(self.state.handle(WorkerUp(w)))
        while not self.state.finished:
            try:
                kind, item = self._queue.get(timeout=TICK)
            except queue.Empty:
                kind, item = "event", Tick(time.time())
            if self.interrupted.is_set() and not self.state.interrupted:
                self.publish("interrupted")
                self._apply(self.state.handle(Interrupt(at=time.time())))  # the state keeps the cancel deadline
            if kind == "done":
                event = self._collect(*item)
            elif kind in ("worker", "predicted"):
                (self._on_worker_event if kind == "worker" else self._predicted)(*item)
                continue
            else:
                event = item
            self._apply(self.state.handle(event))

    def _apply(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Start):
                self._start(ins)
            elif isinstance(ins, Record):
                worker = self.state.assignment.get(ins.uid, -1) if self.state else -1
                self._record(UnitResult(ins.uid, worker, ins.status, error=ins.reason))
            elif isinstance(ins, Requeue):  # a rate limit: the unit starts again later, what it reported is kept
                r = self.held.pop(ins.uid)
                self.carried.setdefault(ins.uid, []).append(r)
                self.journal.unit_requeued(self.run_id, ins.uid)
                o = r.outcome
                self.publish("unit_throttled", r.worker, ins.uid, result_class=o.result_class if o else None,
                             retry_after=o.retry_after if o else None, resets_at=o.resets_at if o else None,
                             requeued=ins.count)
            elif isinstance(ins, Rerun):
                self._rerun(ins)
            elif isinstance(ins, GiveUp):  # rate-limited, and not requeued: its end stands
                self._record(with_earlier_tries(self.carried.pop(ins.uid), self.held.pop(ins.uid))
                             if ins.uid in self.carried else self.held.pop(ins.uid))
            elif isinstance(ins, StopWaiting):
                self.errors.append(f"{len(ins.uids)} unit(s) did not stop within {ins.waited:g}s")
            elif isinstance(ins, Retry):
                self.publish("unit_retry", None, ins.uid, attempt=ins.attempt, error=ins.error)
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
        # A rerun (the merge queue) starts from everything integrated so far, its dependencies merged in if need be;
        # otherwise a dependency conflict the user resolved by hand on the unit's branch is taken as its base.
        start = self.preview.head if ins.rerun else self.start
        resolved = None if ins.rerun else gitops.branch_tip(self.repo, self.branch(ins.uid))
        base = base_for(self.repo, start, ins.uid, deps, self.branch(ins.uid), self.branch, self.run_id,
                        self.env, resolved=resolved)
        if base.commit is None:
            assert base.conflict is not None
            self.conflict = self.conflict or base.conflict
            self.journal.event(self.run_id, "conflict", ins.worker, ins.uid, stage="dependency",
                               files=list(base.conflict.files), theirs=base.conflict.theirs)
            reason = f"merging its dependencies conflicts in {', '.join(base.conflict.files)}"
            self._record(UnitResult(ins.uid, ins.worker, UnitStatus.BLOCKED, error=reason))
            self._queue.put(("event", Blocked(ins.uid, ins.worker, reason)))
            return
        self.dispatches += 1
        self.bases[ins.uid] = base.commit
        spec = self._spec(ins.uid, ins.worker, ins.attempt, base.commit)
        self.publish("unit_submitted", ins.worker, ins.uid, attempt=ins.attempt, base=base.commit,
                     **({"rerun": ins.rerun} if ins.rerun else {}))
        self.journal.unit_dispatched(self.run_id, ins.uid, ins.worker, ins.attempt, "")
        self.emit("unit_dispatched", worker=ins.worker, unit=ins.uid, attempt=ins.attempt)
        try:
            fut = self.backend.submit(self._settings(ins.worker), spec)
        except DistparError as exc:
            fut = Future()
            fut.set_exception(exc)
        self.running[ins.uid] = (spec, fut)
        self.inflow.watch(spec, fut)  # fetched back off this loop, then handed to it

    def _predicted(self, uid: str, found: Found) -> None:
        """A conflict found early: journaled and shown at once."""
        files, others = list(found[0]), list(found[1])
        self.predicted.append({"unit": uid, "files": files, "with": others})
        self.publish("conflict_predicted", None, uid, files=files, others=others, on_conflict=self.options.on_conflict)

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

    def _collect(self, spec: UnitSpec, fut: Future[UnitReply], fetch_error: BaseException | None = None) -> Event:
        uid = spec.uid
        self.running.pop(uid, None)
        try:
            result = fut.result()
        except Exception as exc:  # the transport failed, not the agent
            msg = exc.message if isinstance(exc, DistparError) else f"{type(exc).__name__}: {exc}"
            self.journal.event(self.run_id, "unit_error", spec.worker, uid, attempt=spec.attempt, error=msg)
            return UnitLost(uid, spec.worker, msg)
        if fetch_error is not None:  # its work did not come back into the repository (``Inflow``)
            raise fetch_error
        if result.setup:
            setup = result.setup
            self.publish("workspace_setup", spec.worker, uid, ok=setup["ok"], seconds=round(setup["seconds"], 3),
                         exit_code=setup["exit_code"], node=result.node)
        if result.workspace:
            self.publish("workspace_ready", spec.worker, uid, node=result.node, **result.workspace)
        if result.saved_ref:
            self.saved_refs.append(result.saved_ref)
        r = verify_files(self.repo, self.graph, self.batches[self.graph.unit(uid).batch_id], self.results,
                         result.result, self.branch(uid))
        r = note_owned_files(self.repo, self.graph, r, spec.base)
        o = r.outcome
        now = time.time()
        if o is not None and o.rate_limited and not o.ok:
            # The state decides whether it goes back to the queue (Requeue) or its end stands (GiveUp).
            self.held[uid] = r
            return UnitEnded(uid, spec.worker, r.status, o.cost_usd, outcome=o, at=now, rate_limited=True)
        if uid in self.carried:  # what the dispatches before it (rate-limited) tried and cost counts too
            r = with_earlier_tries(self.carried.pop(uid), r)
        self._record(r)
        found = self.early.check(uid, r.commit, set(result.paths) if result.paths is not None else None) \
            if r.status.ok and r.commit and r.changed else None
        if found is not None:
            self._predicted(uid, found)
        return UnitEnded(uid, spec.worker, r.status, o.cost_usd if o else None, outcome=o, at=now,
                         conflicts=found is not None, conflict_files=tuple(found[0]) if found else (),
                         conflict_with=tuple(found[1]) if found else (),
                         touched=tuple(gitops.out(self.repo, "diff", "--name-only", spec.base, r.commit or spec.base)
                                       .splitlines()) if found else ())

    def _rerun(self, ins: Rerun) -> None:
        """The merge queue: keep the earlier attempt on a ref; the unit is pending again until it runs from
        everything integrated so far (``Start.rerun``); journaled (``unit_rerun``) and shown."""
        earlier = self.results.pop(ins.uid)
        q = mergequeue.keep_attempt(self.site, ins, earlier.commit or "", self.bases.get(ins.uid, self.start))
        self.queued[ins.uid] = q
        self.saved_refs.append(q.saved_ref)
        self.journal.unit_requeued(self.run_id, ins.uid)
        data = q.to_data(ins.reason, ins.base_units)
        self.reruns.append({"unit": ins.uid, **data})
        for p in self.predicted:
            if p["unit"] == ins.uid:
                p["rerun"] = True  # handled by the queue, not a conflict ahead
        self.publish("unit_rerun", earlier.worker, ins.uid, **data)

    def _on_worker_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "unit_started" and data.get("unit") in self.running:
            spec, _ = self.running[data["unit"]]
            self.journal.unit_started(self.run_id, data["unit"], spec.worker, spec.attempt, data.get("node", ""),
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
                    ended = self._collect(*item)
                    if isinstance(ended, UnitEnded) and ended.rate_limited:  # the run stops: its end stands
                        self._apply([GiveUp(ended.uid, "the run stopped after an error")])
                except Exception:
                    log.exception("a unit failed while the run stopped after an error")

    def _record(self, r: UnitResult) -> None:
        self.live.ended(r.unit_id, landed=bool(r.log_path))  # a log_path: the backend landed the unit's full log
        self.results[r.unit_id] = r
        self.journal.unit_ended(self.run_id, r)
        if r.tries > 1:  # the agent was tried again after transient failures: journal each try's class
            self.journal.event(self.run_id, "unit_tries", r.worker, r.unit_id, tries=r.tries,
                               classes=list(r.try_classes))
        self.emit("unit_ended", worker=r.worker, unit=r.unit_id, status=r.status.value, node=r.node,
                  duration=r.duration, error=r.error, log_tail=r.log_tail, changed=r.changed,
                  cost_usd=r.outcome.cost_usd if r.outcome else None, tries=r.tries, notes=list(r.notes))

    # --- what the steps are handed, and what they hand back ----------------------------------------------

    def _agent(self, uid: str) -> AgentConfig:
        return unit_agent(self.graph, self.options.agent, uid)

    def _spec(self, uid: str, worker: int, attempt: int, base: str) -> UnitSpec:
        """What worker ``worker`` is sent to run unit ``uid`` (dispatch number ``self.dispatches``) from ``base``."""
        u = self.graph.unit(uid)
        cfg = self._agent(uid)
        session, restore, node = continued_session(cfg, self.resume_sessions.get(uid), self.backend.remote)
        prompt = unit_prompt(self.graph, self.plan, uid, self.results)
        if uid in self.queued:
            prompt += mergequeue.note(self.repo, self.queued[uid])
        return UnitSpec(
            uid=uid, description=u.description, prompt=prompt,
            agent=cfg, timeout=u.timeout or self.options.timeout, worker=worker, dispatch=self.dispatches,
            branch=self.branch(uid), base=base,
            source=self.transfer.source(base, f"{names.key(uid)}-{self.dispatches}",
                                        extra=(self.saved_ref(uid),) if restore else ()),
            attempt=attempt, session=session, restore=restore, node=node, subagent_type=u.subagent_type,
        )

    def _settings(self, worker: int) -> WorkerSettings:
        """What worker ``worker`` is told once for the whole run (the same for each of its units), made once."""
        if (made := self.worker_settings.get(worker)) is not None:
            return made
        ctx = self._ctx_stub()
        made = self.worker_settings[worker] = WorkerSettings(
            run_id=self.run_id, workspace=self.backend.workspace(ctx, worker), log_dir=self.backend.log_dir(ctx),
            identity=self.identity, env=self.forwarded, return_bundle=self.transfer.return_bundle,
            include=tuple(self.include) if (not self.backend.remote or self.include_data) else (),
            include_data=self.include_data, plan_text=self.plan_text,
            pool=self.backend.pool(ctx) if self.options.reuse_workspaces else "",
            options=run_options.worker_options(self.options),
        )
        return made

    def _restore(self) -> None:
        """Pick up the journaled run this one continues."""
        back = users_branch_back(self.site)  # off the run's branches, which it may move
        row = self.journal.run(self.run_id)
        self.earlier_wall = earlier_wall(self.journal, self.run_id, float(row["started"])) if row else 0.0
        rec = recover(self.site, self.journal, self.units)
        self.results.update(rec.results)
        self.resume_sessions.update(rec.sessions)
        self.dispatches = rec.dispatches
        self.saved_refs.extend(rec.saved_refs)
        events = self.journal.events(self.run_id)
        ok = {uid for uid, r in self.results.items() if uid not in rec.recovered}
        self.queued = mergequeue.from_journal(events, ok)
        for uid, q in self.queued.items():  # its branch still holds the conflicting attempt: not finished work
            if uid in self.results and self.results[uid].commit == q.earlier:
                del self.results[uid]
        self.emit("run_resumed", run_id=self.run_id, done=len(self.results), recovered=rec.recovered,
                  done_units=sorted(self.results), back_on=back)

    def _row(self, t0: float) -> dict[str, Any]:
        """The journal's row for a new run: everything resume needs (never a secret: variable names only)."""
        return {
            "id": self.run_id, "plan_path": self.options.plan_path or self.plan.source, "plan_id": self.plan.plan_id,
            "repo": str(self.repo), "target": self.target, "base": self.start, "backend": self.backend.name,
            "workers": self.workers, "strategy": self.schedule.strategy, "state": "running", "started": t0,
            "pid": os.getpid(), "plan": json.dumps(self.plan.to_dict()),
            "schedule": json.dumps(self.schedule.to_dict()),
            "options": json.dumps(run_options.to_row(self.options)),
        }

    def _land(self) -> str | None:
        merges = [(self.branch(u.uid), self.results[u.uid].commit or self.start)
                  for u in sorted(self.units, key=lambda u: u.order)]
        landed: Landed = land_run(self.site, self.options, merges, self.include, self.events, sides=self._sides,
                                  fixer=self._fix, stop=self.stop_landing)
        self.resolutions = landed.resolutions
        if landed.interrupted:  # Ctrl+C while the agent resolved a conflict: resumable from the final merge
            self.interrupted.set()
            return None
        self.conflict = self.conflict or landed.conflict
        self.gate, self.pushed = landed.gate, landed.pushed
        self.review = landed.review
        self.bisected = {**landed.bisected.to_dict(), "description": landed.bisected.describe()} \
            if landed.bisected else None
        return landed.head

    def _sides(self, head: str, branch: str, files: tuple[str, ...]) -> tuple[resolve.Side, resolve.Side]:
        """The two sides of a conflicting final merge, for the resolver: the integrated units that touched
        ``files`` and the unit of ``branch``, with their prompts."""
        by_branch = {self.branch(u.uid): u.uid for u in self.units}
        theirs = by_branch.get(branch, branch)

        def touched(uid: str) -> bool:
            c = self.results[uid].commit if uid in self.results else None
            return bool(c) and gitops.is_ancestor(self.repo, c or "", head) and bool(set(files) & set(
                gitops.out(self.repo, "diff", "--name-only", self.start, c or "").splitlines()))

        ours = [u for u in self.order if u != theirs and u in by_branch.values() and touched(u)]
        prompt = lambda uid: unit_prompt(self.graph, self.plan, uid, self.results)  # noqa: E731
        return (resolve.Side(tuple(ours), tuple(prompt(u) for u in ours)),
                resolve.Side((theirs,), (prompt(theirs),) if theirs in by_branch.values() else ()))

    def _spent(self) -> float | None:
        """The run's cost so far: every unit's attempts (the journal's sum) and the fix units of this attempt."""
        fixes = [float(f["cost_usd"]) for f in self.fixes if f.get("cost_usd") is not None]
        units = self.journal.spent(self.run_id)
        return None if units is None and not fixes else (units or 0.0) + sum(fixes)

    def _fix(self, head: str, prompt: str, n: int) -> tuple[str | None, dict[str, Any]]:
        """--on-verify-fail fix: unit ``fix-<n>`` on ``head`` (see ``fixunit.run_fix``)."""
        self.dispatches += 1
        fix = FixUnit(self.site, self.options, self.identity, self.forwarded, tuple(self.include), self.plan_text,
                      self.workers + n - 1, self.dispatches)
        commit, end, saved = run_fix(fix, head, prompt, n, self._spent() or 0.0, self.events,
                                     lambda kind, data: self._on_worker_event(kind, data), self.transfer.fetch_back)
        self.saved_refs.extend(saved)
        self.fixes.append(end)
        return commit, end

    def _cleanup(self) -> None:
        if not self.backend.remote and self.options.reuse_workspaces:
            self.saved_refs.extend(give_back(self.site, self.journal))
        elif not self.backend.remote:
            spaces = [Path(self.backend.workspace(self._ctx_stub(), w)) for w in range(self.workers)]
            self.saved_refs.extend(cleanup(self.site, self.journal, spaces))
        self.transfer.clear()
        self.live.close()  # units that never handed a result back: their live copy is kept in their log

    def _report(self, wall: float, landed: str | None) -> RunReport:
        """What the run ended with. After a clean landing the run's branches and refs (not its saved work) go."""
        results = [self.results[uid] for uid in self.order if uid in self.results]
        pending = [uid for uid in self.order if uid not in self.results]
        interrupted = self.interrupted.is_set() and landed is None  # an interrupt after landing changed nothing
        code = exit_code(failed=any(not r.status.ok for r in results if r.unit_id not in self.empty),
                         conflict=self.conflict is not None, errors=bool(self.errors), gate=self.gate is not None,
                         interrupted=interrupted, pending=bool(pending))
        branches = [self.branch(u.uid) for u in self.units] + [self.integration]
        if landed is not None and self.conflict is None and not self.options.keep_branches:
            release(self.site, branches)
            branches = []
        else:
            branches = [b for b in branches if gitops.try_rev(self.repo, f"refs/heads/{b}")]
        return RunReport(
            run_id=self.run_id, state="review" if self.review and code == ExitCode.OK else RunReport.STATES[code],
            exit_code=code, review=self.review, target=self.target, results=results,
            pending=pending, wall=wall, conflict=self.conflict, errors=self.errors, branches=branches,
            saved_refs=sorted(set(self.saved_refs)), landed=landed, budget_usd=self.options.budget_usd,
            budget_exhausted=self.budget_exhausted, predicted_conflicts=self.predicted,
            gate=self.gate.to_dict() if self.gate else None, bisected=self.bisected, fixes=self.fixes,
            pushed=self.pushed, stopped=self.rate_stop, reruns=list(self.reruns), resolutions=list(self.resolutions),
            warnings=list(self.warnings), spent=self._spent(),
        )

    # --- signals ---------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Safe from a signal handler: only sets flags (the loop journals it). Once every unit is done and the
        merge has begun, the merge and landing finish: they are quick, and stopping them half way would only
        leave a half-made integration branch."""
        if self.landing:
            self.interrupted_while_landing = True
            self.stop_landing.set()  # a resolution by an agent or a search of the gate stops; the run resumes
            return
        if not self.interrupted.is_set():
            self.interrupted.set()
            self.backend.cancel()
