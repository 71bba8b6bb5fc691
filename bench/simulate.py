"""What the coordinator's own decisions give, without any overhead: the executor's units (``state_units`` of
the unit graph) fed through the real pure ``RunState`` on a simulated clock, every unit taking exactly its true
duration.

``dispatch``: what ``distpar run`` does today (a free worker takes the best ready unit; midpoint/round-robin
stay pinned to their workers). ``static``: the plan frozen into the scheduler's lanes before anything runs,
each lane in its order on its own worker (what distpar did before run-time scheduling), for comparison.
Durations in seconds; the units' priorities come from the plan's estimates, which may be wrong or absent.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from distpar.core.model import UnitStatus
from distpar.core.plan import Plan
from distpar.core.schedule import Schedule
from distpar.core.state import Finish, Instruction, RunState, Start, UnitEnded, UnitInfo, WorkerUp
from distpar.core.stateunits import state_units
from distpar.core.units import unit_graph


@dataclass(frozen=True, slots=True)
class Simulated:
    makespan: float
    timeline: tuple[tuple[str, int, float, float], ...]  # (unit, worker, start, end)


def run_state(units: list[UnitInfo], workers: int, durations: dict[str, float], *, all_up: bool = False) -> Simulated:
    """Drive ``RunState`` with ``workers`` workers until it finishes; every unit ends after its duration.

    The workers come up one after another, as the executor reports them. ``all_up``: the state knows every
    worker is alive before the first one is offered work (otherwise a unit pinned to a worker that is not up yet
    may go to the first free one: RunState treats a pin to a worker not alive as no pin)."""
    st = RunState.create(units)
    if all_up:
        st.alive.update(range(workers))
    clock = 0.0
    pending: list[tuple[float, int, str, int]] = []  # (end, tie, unit, worker)
    timeline: list[tuple[str, int, float, float]] = []

    def apply(instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Start):
                end = clock + durations[ins.uid]
                heapq.heappush(pending, (end, len(timeline), ins.uid, ins.worker))
                timeline.append((ins.uid, ins.worker, clock, end))

    for w in range(workers):
        apply(st.handle(WorkerUp(w)))
    for _ in range(4 * len(units) + workers + 1):  # bounded: every step ends one unit
        if st.finished or not pending:
            break
        clock, _, uid, worker = heapq.heappop(pending)
        out = st.handle(UnitEnded(uid, worker, UnitStatus.OK))
        apply(out)
        if any(isinstance(i, Finish) for i in out):
            break
    if not st.complete:
        raise ValueError(f"the simulated run did not complete: {len(st.done)} of {len(units)} units ended")
    return Simulated(max((e for *_, e in timeline), default=0.0), tuple(timeline))


def dispatch(plan: Plan, schedule: Schedule, durations: dict[str, float]) -> Simulated:
    """The executor's run-time dispatch of ``plan`` (its units, its worker count)."""
    graph = unit_graph(plan, strategy=schedule.strategy)
    workers = 2 if graph.rule == "midpoint" else max(1, schedule.workers)
    return run_state(state_units(graph, schedule.strategy, workers), workers, durations)


def static(plan: Plan, schedule: Schedule, durations: dict[str, float]) -> Simulated:
    """The schedule's lanes carried out as they are: each batch pinned to its lane, after the one before it
    in that lane and after its dependencies."""
    deps = {b.id: list(b.depends_on) for b in plan.batches}
    pin: dict[str, int] = {}
    for s in schedule.lanes:
        for prev, cur in zip(s.batch_ids, s.batch_ids[1:], strict=False):
            if prev not in deps[cur]:
                deps[cur].append(prev)
        pin.update(dict.fromkeys(s.batch_ids, s.index))
    units = [UnitInfo(b.id, tuple(deps[b.id]), 0.0, i, pin[b.id]) for i, b in enumerate(plan.batches)]
    return run_state(units, len(schedule.lanes), durations, all_up=True)
