"""The run state: a pure state machine that decides what runs where and when the run ends.

Modelled on dask.distributed's ``WorkerState.handle_stimulus``: events go in, instructions come out, and
nothing here touches git, a process, a clock or the journal. The executor (``distpar.coordinator.executor``)
carries out the instructions and turns what happens (a worker is up, a unit ended, a transport broke, Ctrl+C)
into events. Each event type has one handler (``@handles``), and ``validate()`` checks the invariants.

Units are the things that run: one agent session each, on one branch of their own. A unit is *ready* when every
unit it depends on ended ok; a free worker takes the highest-priority ready unit it may take (critical path by
estimate, then plan order; a pinned unit only on its worker). A unit whose dependency did not succeed is
skipped, and so is everything after it. The run is over when nothing runs and nothing more can start.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from distpar.core.model import AgentOutcome, UnitStatus
from distpar.core.ratelimit import RateLimiter
from distpar.core.stimuli import (
    Blocked,
    BudgetSpent,
    CancelAll,
    Event,
    Fatal,
    Finish,
    GiveUp,
    Instruction,
    Interrupt,
    Record,
    Requeue,
    Rerun,
    Retry,
    Start,
    StopWaiting,
    Throttle,
    Tick,
    UnitEnded,
    UnitLost,
    WorkerDown,
    WorkerUp,
)

# event type -> the RunState method that handles it, filled by ``@handles`` as the class body is read (the way
# dask.distributed's WorkerState registers its event handlers)
_HANDLERS: dict[type, Callable[[Any, Any], list[Instruction] | None]] = {}
H = TypeVar("H", bound=Callable[..., Any])


def handles(kind: type) -> Callable[[H], H]:
    def register(method: H) -> H:
        if kind in _HANDLERS:
            raise TypeError(f"two handlers for {kind.__name__}")
        _HANDLERS[kind] = method
        return method
    return register


class InvariantError(AssertionError):
    """The run state broke one of its invariants (``RunState.validate``): a bug in the state, never bad input."""


@dataclass(frozen=True, slots=True)
class UnitInfo:
    """What the state needs to know of a unit."""

    uid: str
    deps: tuple[str, ...] = ()
    priority: float = 0.0  # higher runs first: the critical path from this unit to the end, by estimate
    order: int = 0  # plan order, the tie-break
    pin: int | None = None  # the only worker that may run it (the seed's pinned workers); it waits for that
    # worker to come up, and goes to any worker only once that one is down (so every pin must come up or go down)


@dataclass
class RunState:
    units: dict[str, UnitInfo]
    retries: int = 2  # transport failures: a unit runs again on another worker up to this many times
    budget_usd: float | None = None
    stop_on_conflict: bool = False
    agent_retries: int = 2  # rate limits: a unit goes back to the queue at most this many times
    cancel_wait: float | None = None  # seconds an interrupted run waits for its units (None: as long as they take)
    done: dict[str, UnitStatus] = field(default_factory=dict)
    running: dict[str, tuple[int, int]] = field(default_factory=dict)  # uid -> (worker, attempt)
    attempts: dict[str, int] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)  # workers with nothing to do, in the order they came free
    alive: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)  # workers that went down (their pinned units go to any worker)
    dependents: dict[str, list[str]] = field(default_factory=dict)
    spent: float = 0.0
    interrupted: bool = False
    fatal: bool = False
    conflicted: bool = False
    budget_exhausted: bool = False
    limiter: RateLimiter | None = None  # agents at once under rate limits (None: as many as there are workers)
    rate_stopped: bool = False  # a usage limit far away: start nothing more
    now: float = 0.0
    finished: bool = False
    assignment: dict[str, int] = field(default_factory=dict)  # uid -> worker that ran it last
    # Kept as units settle, so that an event costs what it touches, not the size of the plan:
    waiting: dict[str, int] = field(default_factory=dict)  # uid -> dependencies not (yet) ended ok
    ready_set: set[str] = field(default_factory=set)  # pending units whose dependencies all ended ok
    heap: list[tuple[float, int, str]] = field(default_factory=list)  # ready units, best first (stale entries)
    requeues: dict[str, int] = field(default_factory=dict)  # uid -> times it went back after a rate limit
    on_conflict: str = "stop"  # "rerun": a unit whose finished work conflicts joins the merge queue (``Rerun``)
    max_reruns: int = 1  # times one unit may run again after a conflict
    reruns: dict[str, int] = field(default_factory=dict)  # uid -> times it was queued again after a conflict
    rerun_queue: list[str] = field(default_factory=list)  # the merge queue: units waiting to run again, oldest first
    rerun_files: dict[str, frozenset[str]] = field(default_factory=dict)  # queued or running rerun -> its files
    integrated: list[str] = field(default_factory=list)  # units that ended ok without a conflict, in that order
    cancel_by: float | None = None  # interrupted: the time after which the run stops waiting for its units
    _seen: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)  # what validate() saw last

    @classmethod
    def create(cls, units: Sequence[UnitInfo], done: Mapping[str, UnitStatus] | None = None,
               running: Mapping[str, int] | None = None, queued: Mapping[str, tuple[int, Sequence[str]]] | None = None,
               **kw: object) -> RunState:
        """``done``: units that ended already (resume); ``running``: unit -> the worker that runs it now (a
        prediction from the middle of a run), each with its dependencies ok, at most one per worker; ``queued``:
        unit -> (times queued, conflicting files) for units a resumed run finds in the merge queue."""
        st = cls({u.uid: u for u in units}, **kw)  # type: ignore[arg-type]
        for uid, (count, files) in (queued or {}).items():
            st.reruns[uid] = count
            if uid in st.units and uid not in (done or {}):
                st.rerun_queue.append(uid)
                st.rerun_files[uid] = frozenset(files)
        for u in units:
            for d in u.deps:
                if d not in st.units:
                    raise ValueError(f"unit {u.uid!r} depends on unknown unit {d!r}")
                st.dependents.setdefault(d, []).append(u.uid)
        st.done.update(done or {})
        for uid, worker in (running or {}).items():
            if uid not in st.units or uid in st.done:
                raise ValueError(f"running unit {uid!r} is unknown or done")
            if any(st.done.get(d) is not UnitStatus.OK for d in st.units[uid].deps) or st._busy(worker):
                raise ValueError(f"unit {uid!r} cannot run on worker {worker}")
            st.running[uid] = (worker, 1)
            st.attempts[uid] = 1
            st.assignment[uid] = worker
        for u in units:
            if u.uid not in st.done:
                st.waiting[u.uid] = sum(1 for d in u.deps if st.done.get(d) is not UnitStatus.OK)
                if st.waiting[u.uid] == 0 and u.uid not in st.running and u.uid not in st.rerun_files:
                    st._make_ready(u.uid)
        return st

    # --- queries -------------------------------------------------------------------------------------

    @property
    def pending(self) -> list[str]:
        return [u for u in self.units if u not in self.done and u not in self.running]

    def ready(self) -> list[str]:
        """Pending units whose dependencies all ended ok, best first."""
        return sorted(self.ready_set, key=self._key)

    def _key(self, uid: str) -> tuple[float, int, str]:
        u = self.units[uid]
        return (-u.priority, u.order, uid)

    def _make_ready(self, uid: str) -> None:
        if uid not in self.ready_set:
            self.ready_set.add(uid)
            heapq.heappush(self.heap, self._key(uid))

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.units) and all(s is UnitStatus.OK for s in self.done.values())

    def _may_start(self) -> bool:
        return not (self.interrupted or self.fatal or self.budget_exhausted or self.rate_stopped
                    or (self.stop_on_conflict and self.conflicted))

    # --- invariants ----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``InvariantError`` unless the state is consistent, and consistent with what the previous call saw
        (nothing left a terminal state, money and requeues only grew, a stop stays a stop). Cheap enough for the
        property tests to call after every event; the executor does not."""
        def check(ok: object, why: str) -> None:
            if not ok:
                raise InvariantError(why)

        done, running, ready = set(self.done), set(self.running), self.ready_set
        check(not done & running, f"units both done and running: {sorted(done & running)}")
        check(not ready & (done | running), f"ready units that are done or running: {sorted(ready & (done | running))}")
        check((done | running) <= set(self.units), "a done or running unit the state does not know")
        check(len(done) + len(running) + len(self.pending) == len(self.units), "the unit counts do not add up")
        check(all(s.is_terminal() for s in self.done.values()), "a done unit in a state that is not terminal")
        workers = [w for w, _ in self.running.values()]
        check(len(workers) == len(set(workers)), f"a worker runs two units: {sorted(self.running.items())}")
        check(not set(workers) & set(self.free), "a worker is both free and busy")
        check(len(self.free) == len(set(self.free)) and set(self.free) <= self.alive, "free workers not alive")
        check(not self.alive & self.gone, "a worker both alive and gone")
        check(not set(workers) & self.gone, "a unit runs on a worker that is gone")
        for uid, (_, attempt) in self.running.items():
            check(attempt == self.attempts.get(uid) and 1 <= attempt <= self.retries + 1,
                  f"{uid} runs attempt {attempt} (attempts {self.attempts.get(uid)}, retries {self.retries})")
            check(all(self.done.get(d) is UnitStatus.OK for d in self.units[uid].deps),
                  f"{uid} runs before its dependencies ended ok")
        for uid in self.pending:
            deps_ok = all(self.done.get(d) is UnitStatus.OK for d in self.units[uid].deps)
            missing = sum(1 for d in self.units[uid].deps if self.done.get(d) is not UnitStatus.OK)
            check(self.waiting.get(uid) == missing, f"{uid} waits for a wrong number of dependencies")
            check(uid not in ready or deps_ok, f"{uid} is ready before its dependencies ended ok")
            check(self.finished or uid in ready or uid in self.rerun_queue or not deps_ok,
                  f"{uid} can run but is not ready")
        queue = set(self.rerun_queue)
        check(len(queue) == len(self.rerun_queue), "a unit is twice in the merge queue")
        check(not queue & (done | running | ready), "a unit in the merge queue is also done, running or ready")
        check(queue <= set(self.rerun_files), "a queued rerun without its files")
        check(all(0 < n <= self.max_reruns for n in self.reruns.values()), "rerun more than allowed")
        check(self.on_conflict == "rerun" or not self.reruns, "a rerun without --on-conflict rerun")
        for a in running & set(self.rerun_files):
            for b in running & set(self.rerun_files):
                check(a == b or not self.rerun_files[a] & self.rerun_files[b],
                      f"reruns {a} and {b} touch the same files at once")
        heaped = {key[2] for key in self.heap if key == self._key(key[2])}
        check(ready <= heaped, f"ready units missing from the queue: {sorted(ready - heaped)}")
        check(all(0 < n <= self.agent_retries for n in self.requeues.values()), "requeued more than allowed")
        check(self.spent >= 0.0, "money spent is negative")
        check(self.budget_exhausted == (self.budget_usd is not None and self.spent >= self.budget_usd),
              f"budget exhausted {self.budget_exhausted} with {self.spent} spent of {self.budget_usd}")
        check(not self.finished or not self.running, "finished while units run")
        if self.finished:
            check(not self._startable(), "finished while a unit could still start")
        flags = (self.interrupted, self.fatal, self.budget_exhausted, self.rate_stopped, self.conflicted, self.finished)
        seen = (dict(self.done), self.spent, dict(self.requeues), flags, self.now, dict(self.reruns))
        if self._seen is not None:
            before_done, before_spent, before_requeues, before_flags, before_now, before_reruns = self._seen
            check(all(self.reruns.get(u, 0) >= n for u, n in before_reruns.items()), "a rerun count went down")
            changed = {u: (s, self.done.get(u)) for u, s in before_done.items() if self.done.get(u) is not s}
            check(not changed, f"units left a terminal state: {changed}")
            check(self.spent >= before_spent, f"money spent went down: {before_spent} -> {self.spent}")
            check(all(self.requeues.get(u, 0) >= n for u, n in before_requeues.items()), "a requeue count went down")
            check(all(a <= b for a, b in zip(before_flags, flags, strict=True)), "a stop was undone")
            check(self.now >= before_now, "time went backwards")
        self._seen = seen

    # --- the transition function ---------------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        """One event in, the instructions it calls for out (nothing once the run finished). Each event type has
        its handler (``@handles``); a handler returns None when the event changes nothing (a late report)."""
        if self.finished:
            return []
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"the run state has no handler for {type(event).__name__}")
        out = handler(self, event)
        if out is None:
            return []
        out += self._deadline()
        out += self._dispatch()
        if not self.running and not self._startable():
            self.finished = True
            out.append(Finish(self.complete))
        return out

    @handles(WorkerUp)
    def _worker_up(self, event: WorkerUp) -> list[Instruction]:
        self.alive.add(event.worker)
        self.gone.discard(event.worker)
        if event.worker not in self.free and not self._busy(event.worker):
            self.free.append(event.worker)
        return []

    @handles(WorkerDown)
    def _worker_down(self, event: WorkerDown) -> list[Instruction]:
        self.alive.discard(event.worker)
        self.gone.add(event.worker)
        if event.worker in self.free:
            self.free.remove(event.worker)
        out: list[Instruction] = []
        for uid, (w, _) in list(self.running.items()):
            if w == event.worker:
                out += self._lost(uid, event.error or f"worker {event.worker} went away", back_to_pool=False)
        return out

    @handles(UnitEnded)
    def _unit_ended(self, event: UnitEnded) -> list[Instruction] | None:
        if not self._runs(event.uid, event.worker):
            return None  # a late or duplicate report: the unit was settled, or runs again on another worker
        worker, attempt = self.running.pop(event.uid)
        self.assignment[event.uid] = worker
        self._release(worker)
        if not event.rate_limited:
            self.rerun_files.pop(event.uid, None)  # a rerun that ended (a rate-limited one stays in the queue)
        if event.cost_usd:
            self.spent += event.cost_usd
        if event.at is not None:
            self.now = max(self.now, event.at)
        out: list[Instruction] = []
        if event.outcome is not None:
            out += self._observe(event.outcome)
        if event.rate_limited:
            # A rate limit is the run's signal, not the unit's failure: the unit starts again when the limiter
            # lets it (a few times at most), with the same attempt (it never really ran) and from the same base.
            count = self.requeues.get(event.uid, 0) + 1
            if not self.interrupted and count <= self.agent_retries:
                self.requeues[event.uid] = count
                self.attempts[event.uid] = attempt
                if event.uid in self.rerun_files:
                    self.rerun_queue.insert(0, event.uid)
                else:
                    self._make_ready(event.uid)
                out.append(Requeue(event.uid, count))
                return out + self._spend()
            out.append(GiveUp(event.uid, "the run was interrupted" if self.interrupted
                              else f"rate-limited {count} times"))
        if event.conflicts and event.status is UnitStatus.OK:
            rerun = self._rerun(event, attempt)
            if rerun is not None:
                return [*out, rerun, *self._spend()]
            self.conflicted = True
        elif event.status is UnitStatus.OK:
            self.integrated.append(event.uid)
        out += self._settle(event.uid, event.status, "")
        return out + self._spend()

    def _rerun(self, event: UnitEnded, attempt: int) -> Rerun | None:
        """The merge queue (``--on-conflict rerun``): the unit runs again from everything integrated so far, after
        any queued rerun that touches the same files. None: its conflict stands (not rerun mode, no reruns left,
        or the run stops)."""
        count = self.reruns.get(event.uid, 0) + 1
        if self.on_conflict != "rerun" or count > self.max_reruns:
            return None  # (an interrupted or stopped run still queues it: it stays pending, resumable)
        self.reruns[event.uid] = count
        self.attempts[event.uid] = attempt
        self.rerun_queue.append(event.uid)
        self.rerun_files[event.uid] = frozenset(event.conflict_files) | frozenset(event.touched)
        reason = (f"conflicts in {', '.join(event.conflict_files) or 'its files'} with "
                  f"{', '.join(event.conflict_with) or 'work already integrated'}")
        return Rerun(event.uid, tuple(self.integrated), reason, event.conflict_files, event.conflict_with, count,
                     tuple(sorted(self.rerun_files[event.uid])))

    @handles(UnitLost)
    def _unit_lost(self, event: UnitLost) -> list[Instruction] | None:
        if not self._runs(event.uid, event.worker):
            return None
        return self._lost(event.uid, event.error, back_to_pool=True)

    @handles(Blocked)
    def _blocked(self, event: Blocked) -> list[Instruction] | None:
        if not self._runs(event.uid, event.worker):
            return None
        worker, _ = self.running.pop(event.uid)
        self._release(worker)
        out = self._settle(event.uid, UnitStatus.BLOCKED, event.reason)
        self.conflicted = True
        return out

    @handles(Interrupt)
    def _interrupt(self, event: Interrupt) -> list[Instruction]:
        if event.at is not None:
            self.now = max(self.now, event.at)
        if self.interrupted:
            return []
        self.interrupted = True
        if self.cancel_wait is not None:
            self.cancel_by = self.now + self.cancel_wait
        return [CancelAll()]

    @handles(Fatal)
    def _fatal(self, event: Fatal) -> list[Instruction]:
        if self.fatal:
            return []
        self.fatal = True
        return [CancelAll()]

    @handles(Tick)
    def _tick(self, event: Tick) -> list[Instruction]:
        self.now = max(self.now, event.now)
        return []

    # --- helpers -------------------------------------------------------------------------------------

    def _spend(self) -> list[Instruction]:
        if self.budget_usd is not None and self.spent >= self.budget_usd and not self.budget_exhausted:
            self.budget_exhausted = True
            return [BudgetSpent(self.spent, tuple(self.pending))]
        return []

    def _deadline(self) -> list[Instruction]:
        """An interrupted run waits ``cancel_wait`` for its units to save their work, then ends without them."""
        if self.cancel_by is None or not self.running or self.now <= self.cancel_by:
            return []
        left = tuple(self.running)
        for uid in left:
            self.attempts[uid] = self.running.pop(uid)[1]
        return [StopWaiting(left, self.cancel_wait or 0.0)]

    def _runs(self, uid: str, worker: int) -> bool:
        """Whether ``worker`` runs ``uid`` now: a report from anyone else is late (its worker went down and the unit
        went to another one) and must neither settle the unit nor free the worker that runs it."""
        return uid in self.running and self.running[uid][0] == worker

    def _busy(self, worker: int) -> bool:
        return any(w == worker for w, _ in self.running.values())

    def _release(self, worker: int) -> None:
        if worker in self.alive and worker not in self.free:
            self.free.append(worker)

    def _settle(self, uid: str, status: UnitStatus, reason: str) -> list[Instruction]:
        """``uid`` reached ``status``; a failure skips everything that depends on it, transitively."""
        out: list[Instruction] = []
        self.done[uid] = status
        self.ready_set.discard(uid)
        if status is UnitStatus.OK:
            for d in self.dependents.get(uid, ()):
                if d in self.waiting:
                    self.waiting[d] -= 1
                    if self.waiting[d] == 0 and d not in self.done and d not in self.running:
                        self._make_ready(d)
        else:
            stack = [(d, uid) for d in self.dependents.get(uid, [])]
            while stack:
                dep, cause = stack.pop()
                if dep in self.done or dep in self.running:
                    continue
                self.done[dep] = UnitStatus.SKIPPED
                out.append(Record(dep, UnitStatus.SKIPPED, f"dependency {cause} did not succeed"))
                stack += [(d, dep) for d in self.dependents.get(dep, [])]
        return out

    def _lost(self, uid: str, error: str, back_to_pool: bool) -> list[Instruction]:
        worker, attempt = self.running.pop(uid)
        if back_to_pool:
            self._release(worker)
        if attempt <= self.retries and not (self.interrupted or self.fatal):
            self.attempts[uid] = attempt + 1
            if uid in self.rerun_files:
                self.rerun_queue.insert(0, uid)  # a rerun keeps its place in the merge queue
            else:
                self._make_ready(uid)
            return [Retry(uid, attempt + 1, error)]
        out: list[Instruction] = [Record(uid, UnitStatus.FAILED, error)]
        return out + self._settle(uid, UnitStatus.FAILED, error)

    def _observe(self, outcome: AgentOutcome) -> list[Instruction]:
        """Rate limits are a signal for the whole run (``distpar.core.ratelimit``): fewer agents at once, a pause until
        the time the provider named, or no new unit at all when a usage limit resets far away."""
        if self.limiter is None:
            return []
        before = (self.limiter.allowed, self.limiter.pause_until, self.limiter.stopped_until)
        self.limiter = self.limiter.observe(outcome, self.now)
        after = (self.limiter.allowed, self.limiter.pause_until, self.limiter.stopped_until)
        if after == before:
            return []
        stop = self.limiter.stopped_until is not None
        self.rate_stopped = self.rate_stopped or stop
        until = self.limiter.stopped_until if stop else self.limiter.pause_until
        return [Throttle(self.limiter.allowed, until if until and until != float("inf") and until > self.now
                         else None, stop, self.limiter.reason)]

    def _startable(self) -> bool:
        """Could anything still start (now or once something running ends)?"""
        if not self._may_start() or not self.alive:
            return False
        return bool(self.ready_set or self.rerun_queue)

    def _dispatch(self) -> list[Instruction]:
        """Free workers take the best ready units they may take (a pinned unit waits for its own worker)."""
        if not self._may_start():
            return []
        out: list[Instruction] = self._dispatch_reruns()
        aside: list[tuple[float, int, str]] = []  # ready, but their pinned worker is busy: back in the heap after
        while self.heap and self.free and (self.limiter is None
                                           or self.limiter.decide(self.now, len(self.running)).start):
            key = heapq.heappop(self.heap)
            uid = key[2]
            if uid not in self.ready_set or key != self._key(uid):
                continue  # stale: started or settled since it was pushed
            worker = self._worker_for(self.units[uid])
            if worker is None:
                aside.append(key)
                continue
            self.ready_set.discard(uid)
            self.free.remove(worker)
            attempt = self.attempts.setdefault(uid, 1)
            self.running[uid] = (worker, attempt)
            self.assignment[uid] = worker
            out.append(Start(uid, worker, attempt))
        for key in aside:
            heapq.heappush(self.heap, key)
        return out

    def _dispatch_reruns(self) -> list[Instruction]:
        """The merge queue goes first (its units' work is the oldest), oldest first; a rerun waits while another
        rerun touching one of its files runs, so that they do not collide again."""
        out: list[Instruction] = []
        busy = set().union(*(self.rerun_files[u] for u in self.running if u in self.rerun_files))
        for uid in list(self.rerun_queue):
            if not self.free or (self.limiter is not None and not self.limiter.decide(self.now,
                                                                                        len(self.running)).start):
                break
            worker = self._worker_for(self.units[uid])
            if worker is None or self.rerun_files[uid] & busy:
                continue  # its pinned worker is busy, or a rerun on one of its files runs
            busy |= self.rerun_files[uid]
            self.rerun_queue.remove(uid)
            self.free.remove(worker)
            attempt = self.attempts.setdefault(uid, 1)
            self.running[uid] = (worker, attempt)
            self.assignment[uid] = worker
            out.append(Start(uid, worker, attempt, rerun=self.reruns.get(uid, 0)))
        return out

    def _worker_for(self, unit: UnitInfo) -> int | None:
        """The free worker that takes ``unit``: a pinned unit's own worker (or, once that worker went down, any);
        otherwise the worker that ran one of its dependencies (its workspace already has that work), else the
        worker that came free first. None: it must wait (its pinned worker is busy or not up yet)."""
        if unit.pin is not None and unit.pin not in self.gone:
            return unit.pin if unit.pin in self.free else None
        near = [self.assignment[d] for d in unit.deps if self.assignment.get(d) in self.free]
        return near[0] if near else self.free[0]


def critical_path(units: Iterable[tuple[str, tuple[str, ...], float]]) -> dict[str, float]:
    """uid -> the longest estimate-weighted path from the unit to the end of the run (the unit included).
    ``units`` must come dependencies first."""
    items = list(units)
    est = {u: e for u, _, e in items}
    after: dict[str, list[str]] = {}
    for u, deps, _ in items:
        for d in deps:
            after.setdefault(d, []).append(u)
    rank: dict[str, float] = {}
    for u, _, _ in reversed(items):
        rank[u] = est[u] + max((rank[v] for v in after.get(u, ())), default=0.0)
    return rank


__all__ = [
    "Blocked",
    "BudgetSpent",
    "CancelAll",
    "Event",
    "Fatal",
    "Finish",
    "GiveUp",
    "Instruction",
    "Interrupt",
    "InvariantError",
    "Record",
    "Requeue",
    "Rerun",
    "Retry",
    "RunState",
    "Start",
    "StopWaiting",
    "Throttle",
    "Tick",
    "UnitEnded",
    "UnitInfo",
    "UnitLost",
    "WorkerDown",
    "WorkerUp",
    "critical_path",
]
