"""The run state: a pure state machine that decides what runs where and when the run ends.

Modelled on dask.distributed's ``WorkerState.handle_stimulus``: events go in, instructions come out, and
nothing here touches git, a process, a clock or the journal. The executor (``distpar.coordinator.executor``)
carries out the instructions and turns what happens (a worker is up, a unit ended, a transport broke,
Ctrl+C) into events.

Units are the things that run: one agent session each, on one branch of their own. A unit is *ready* when every
unit it depends on ended ok; a free worker takes the highest-priority ready unit it may take (critical path by
estimate, then plan order; a pinned unit only on its worker). A unit whose dependency did not succeed is
skipped, and so is everything after it. The run is over when nothing runs and nothing more can start.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from distpar.core.model import AgentOutcome, UnitStatus
from distpar.core.ratelimit import RateLimiter
from distpar.core.stimuli import (
    Blocked,
    BudgetSpent,
    CancelAll,
    Event,
    Fatal,
    Finish,
    Instruction,
    Interrupt,
    Record,
    Retry,
    Start,
    Throttle,
    Tick,
    UnitEnded,
    UnitLost,
    WorkerDown,
    WorkerUp,
)


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

    @classmethod
    def create(cls, units: Sequence[UnitInfo], done: dict[str, UnitStatus] | None = None, **kw: object) -> RunState:
        st = cls({u.uid: u for u in units}, **kw)  # type: ignore[arg-type]
        for u in units:
            for d in u.deps:
                if d not in st.units:
                    raise ValueError(f"unit {u.uid!r} depends on unknown unit {d!r}")
                st.dependents.setdefault(d, []).append(u.uid)
        st.done.update(done or {})
        for u in units:
            if u.uid not in st.done:
                st.waiting[u.uid] = sum(1 for d in u.deps if st.done.get(d) is not UnitStatus.OK)
                if st.waiting[u.uid] == 0:
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

    # --- the transition function ---------------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        out: list[Instruction] = []
        if self.finished:
            return out
        if isinstance(event, WorkerUp):
            self.alive.add(event.worker)
            self.gone.discard(event.worker)
            if event.worker not in self.free and not self._busy(event.worker):
                self.free.append(event.worker)
        elif isinstance(event, WorkerDown):
            self.alive.discard(event.worker)
            self.gone.add(event.worker)
            if event.worker in self.free:
                self.free.remove(event.worker)
            for uid, (w, _) in list(self.running.items()):
                if w == event.worker:
                    out += self._lost(uid, event.error or f"worker {event.worker} went away", back_to_pool=False)
        elif isinstance(event, UnitEnded):
            if not self._runs(event.uid, event.worker):
                return out  # a late or duplicate report: the unit was settled, or runs again on another worker
            worker, attempt = self.running.pop(event.uid)
            self.assignment[event.uid] = worker
            self._release(worker)
            self.conflicted = self.conflicted or event.conflicts
            if event.cost_usd:
                self.spent += event.cost_usd
            if event.at is not None:
                self.now = max(self.now, event.at)
            if event.outcome is not None:
                out += self._observe(event.outcome)
            if event.requeue and not self.interrupted:
                self.attempts[event.uid] = attempt  # runs again with the same attempt: it never really ran
                self._make_ready(event.uid)
            else:
                out += self._settle(event.uid, event.status, "")
            if self.budget_usd is not None and self.spent >= self.budget_usd and not self.budget_exhausted:
                self.budget_exhausted = True
                out.append(BudgetSpent(self.spent, tuple(self.pending)))
        elif isinstance(event, UnitLost):
            if self._runs(event.uid, event.worker):
                out += self._lost(event.uid, event.error, back_to_pool=True)
        elif isinstance(event, Blocked):
            if self._runs(event.uid, event.worker):
                worker, _ = self.running.pop(event.uid)
                self._release(worker)
                out += self._settle(event.uid, UnitStatus.BLOCKED, event.reason)
                self.conflicted = True
        elif isinstance(event, Interrupt):
            if not self.interrupted:
                self.interrupted = True
                out.append(CancelAll())
        elif isinstance(event, Fatal):
            if not self.fatal:
                self.fatal = True
                out.append(CancelAll())
        elif isinstance(event, Tick):
            self.now = max(self.now, event.now)
        out += self._dispatch()
        if not self.running and not self._startable():
            self.finished = True
            out.append(Finish(self.complete))
        return out

    # --- helpers -------------------------------------------------------------------------------------

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
        return bool(self.ready_set)

    def _dispatch(self) -> list[Instruction]:
        """Free workers take the best ready units they may take (a pinned unit waits for its own worker)."""
        if not self._may_start():
            return []
        out: list[Instruction] = []
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
    "Instruction",
    "Interrupt",
    "Record",
    "Retry",
    "RunState",
    "Start",
    "Throttle",
    "Tick",
    "UnitEnded",
    "UnitInfo",
    "UnitLost",
    "WorkerDown",
    "WorkerUp",
    "critical_path",
]
