"""The one prediction of a run: the run state itself (``distpar.core.state``) driven on the estimates.

``distpar plan``, the run header, the live ETA and the report all ask ``predict``: a free worker takes the ready
unit the run would give it (critical path first, then plan order; a pinned unit only on its worker; a unit near
the worker that ran its dependency), because it is the same ``RunState`` deciding. From the middle of a run,
``done`` and ``running`` say where the run is, and the prediction is of what is left. Pure code.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distpar.core.errors import UsageError
from distpar.core.model import UnitStatus
from distpar.core.state import Instruction, RunState, Start, UnitEnded, UnitInfo, WorkerUp
from distpar.core.stateunits import state_units
from distpar.core.units import UnitGraph

__all__ = ["Prediction", "Slot", "predict", "predict_graph", "run_workers"]


@dataclass(frozen=True, slots=True)
class Slot:
    uid: str
    worker: int  # 0-based
    start: float  # in the estimates' unit (minutes for a plan), from the moment of the prediction
    finish: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """What is left of a run by the estimates: when each unit starts and ends, and when the last one ends."""

    workers: int
    makespan: float  # until the last unit ends
    serial: float  # the sum of the estimates of what is left: one worker, one unit after another
    critical_path: float  # the longest chain of estimates through what is left
    path: tuple[str, ...]  # ... and its units, first to last
    slots: tuple[Slot, ...]  # in start order
    waits: dict[str, tuple[str, ...]]  # uid -> its dependencies predicted on another worker (merged in first)

    @property
    def lower_bound(self) -> float:
        return max(self.critical_path, self.serial / self.workers)

    @property
    def speedup(self) -> float:
        return self.serial / self.makespan if self.makespan else 1.0

    @property
    def units(self) -> int:
        return len(self.slots)

    def timeline(self) -> list[list[Slot]]:
        """Per worker, its units in the order it runs them."""
        rows: list[list[Slot]] = [[] for _ in range(self.workers)]
        for s in self.slots:
            rows[s.worker].append(s)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "makespan": self.makespan, "serial": self.serial,
                "critical_path": self.critical_path, "path": list(self.path), "lower_bound": self.lower_bound,
                "speedup": self.speedup,
                "slots": [{"uid": s.uid, "worker": s.worker, "start": s.start, "finish": s.finish}
                          for s in self.slots],
                "waits": {k: list(v) for k, v in self.waits.items()}}


def predict(units: Sequence[UnitInfo], workers: int, estimates: Mapping[str, float], *,
            done: Mapping[str, UnitStatus] | Iterable[str] = (),
            running: Mapping[str, tuple[int, float]] | None = None) -> Prediction:
    """Drive a ``RunState`` of ``units`` on ``workers`` workers where every unit takes its estimate and ends ok.

    ``done``: units that ended (a plain iterable: ended ok); a unit after one that did not end ok never runs.
    ``running``: unit -> (its worker, the time it still needs). Pins beyond ``workers`` wrap around."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    by_uid = {u.uid: u for u in units}
    ended = dict(done) if isinstance(done, Mapping) else dict.fromkeys(done, UnitStatus.OK)
    running = dict(running or {})
    stack = [d for uid in running for d in (by_uid[uid].deps if uid in by_uid else ())]
    while stack:  # a running unit's dependencies ended ok, whatever the caller heard of them
        d = stack.pop()
        if d not in ended and d in by_uid:
            ended[d] = UnitStatus.OK
            stack += by_uid[d].deps
    infos = [UnitInfo(u.uid, u.deps, u.priority, u.order, None if u.pin is None else u.pin % workers) for u in units]
    state = RunState.create(infos, ended, running={uid: w for uid, (w, _) in running.items()}, retries=0)
    clock: list[tuple[float, int, str, int]] = []  # (finish, sequence, uid, worker): what runs, soonest first
    slots: list[Slot] = []
    worker_of: dict[str, int] = {}
    now = 0.0

    def carry_out(instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Start):
                finish = now + max(0.0, estimates.get(ins.uid, 0.0))
                heapq.heappush(clock, (finish, len(slots), ins.uid, ins.worker))
                slots.append(Slot(ins.uid, ins.worker, now, finish))
                worker_of[ins.uid] = ins.worker

    for uid, (w, need) in running.items():
        heapq.heappush(clock, (max(0.0, need), len(slots), uid, w))
        slots.append(Slot(uid, w, 0.0, max(0.0, need)))
        worker_of[uid] = w
    for w in range(workers):
        carry_out(state.handle(WorkerUp(w)))
    for _ in range(2 * len(infos) + 1):  # each unit starts and ends once
        if not clock:
            break
        now, _, uid, w = heapq.heappop(clock)
        carry_out(state.handle(UnitEnded(uid, w, UnitStatus.OK, at=now)))
    if clock or not state.finished:  # only a hand-built graph with a cycle gets here
        raise UsageError("the unit graph cannot be scheduled: its dependencies contain a cycle")
    left = [u for u in units if u.uid in worker_of]
    length, path = _critical(left, {s.uid: s.finish - s.start for s in slots})
    waits = {u.uid: tuple(d for d in dict.fromkeys(u.deps) if d in worker_of and worker_of[d] != worker_of[u.uid])
             for u in left}
    return Prediction(
        workers=workers,
        makespan=max((s.finish for s in slots), default=0.0),
        serial=sum(s.finish - s.start for s in slots),
        critical_path=length,
        path=path,
        slots=tuple(sorted(slots, key=lambda s: (s.start, s.worker))),
        waits={k: v for k, v in waits.items() if v},
    )


def _critical(units: Sequence[UnitInfo], cost: Mapping[str, float]) -> tuple[float, tuple[str, ...]]:
    """The longest chain of ``cost`` through ``units`` (dependencies outside them are done: they cost nothing)."""
    deps = {u.uid: [d for d in dict.fromkeys(u.deps) if d in cost] for u in units}
    users: dict[str, list[str]] = {uid: [] for uid in deps}
    for uid, ds in deps.items():
        for d in ds:
            users[d].append(uid)
    missing = {uid: len(ds) for uid, ds in deps.items()}
    order = [uid for uid, n in missing.items() if n == 0]
    best: dict[str, tuple[float, str | None]] = {}
    for uid in order:  # grows while it is read: Kahn's algorithm
        before = max(deps[uid], key=lambda d: best[d][0], default=None)
        best[uid] = (cost[uid] + (best[before][0] if before else 0.0), before)
        for x in users[uid]:
            missing[x] -= 1
            if missing[x] == 0:
                order.append(x)
    if not best:
        return 0.0, ()
    end = max(best, key=lambda uid: best[uid][0])
    chain: list[str] = []
    at: str | None = end
    while at is not None:
        chain.append(at)
        at = best[at][1]
    return best[end][0], tuple(reversed(chain))


def run_workers(graph: UnitGraph, workers: int) -> int:
    """How many workers a run of ``graph`` has: the seed's midpoint rule always runs its two halves on two."""
    return 2 if graph.rule == "midpoint" else max(1, workers)


def predict_graph(graph: UnitGraph, workers: int, strategy: str = "balanced", *,
                  done: Mapping[str, UnitStatus] | Iterable[str] = (),
                  running: Mapping[str, tuple[int, float]] | None = None, scale: float = 1.0) -> Prediction:
    """``predict`` for a plan's unit graph, as the run of it would go (same workers, pins and priorities);
    ``scale`` multiplies every estimate (e.g. 60: seconds)."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    n = run_workers(graph, workers)
    return predict(state_units(graph, strategy, n), n, {u.uid: u.estimate * scale for u in graph.units},
                   done=done, running=running)
