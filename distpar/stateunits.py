"""A plan's units, as the run state sees them: what each depends on, its priority, its pin."""

from __future__ import annotations

from distpar.plan import Plan
from distpar.schedule import Schedule
from distpar.state import UnitInfo, critical_path

PINNED = ("midpoint", "round-robin")  # strategies whose streams are kept as the user chose them


def plan_units(plan: Plan, schedule: Schedule) -> list[UnitInfo]:
    """The units of a plan: one per batch. A pinned strategy's streams stay streams: each batch waits for the
    one before it in its stream and runs on that stream's worker; otherwise units go to whichever worker is free."""
    pinned = schedule.strategy in PINNED
    deps: dict[str, list[str]] = {b.id: list(b.depends_on) for b in plan.batches}
    pin: dict[str, int] = {}
    if pinned:
        for s in schedule.streams:
            for prev, cur in zip(s.batch_ids, s.batch_ids[1:], strict=False):
                if prev not in deps[cur]:
                    deps[cur].append(prev)
            for b in s.batch_ids:
                pin[b] = s.index
    order = {bid: i for i, bid in enumerate(schedule_order(plan, deps))}
    ranked = critical_path((b, tuple(deps[b]), plan.batch(b).estimate) for b in sorted(order, key=lambda x: order[x]))
    return [UnitInfo(b.id, tuple(deps[b.id]), ranked[b.id], order[b.id], pin.get(b.id)) for b in plan.batches]


def schedule_order(plan: Plan, deps: dict[str, list[str]]) -> list[str]:
    """Plan order made topological (dependencies first)."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(b: str) -> None:
        if b in seen:
            return
        seen.add(b)
        for d in deps[b]:
            visit(d)
        out.append(b)

    for b in plan.batches:
        visit(b.id)
    return out
