"""What ``distpar plan`` shows (``preview``, with ``predict``: the run state on the estimates, see
``distpar.core.predict``) and the static batch ``Schedule`` (``make_schedule``) the run records and the bench
compares against. Pure code, no I/O.

``make_schedule`` (lanes fixed in advance):

Every strategy returns lanes that are subsequences of one global topological order, which makes any schedule
deadlock-free whatever waits across lanes it contains. Lanes keep plan order (made topological: a batch
after its dependencies, otherwise in plan order) unless, with dependencies, another order of the same
assignment finishes earlier.
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distpar.core.errors import UsageError
from distpar.core.plan import Plan, repo_relative
from distpar.core.predict import Prediction, Slot, predict_graph
from distpar.core.units import STRATEGIES, UnitGraph

__all__ = [
    "STRATEGIES",
    "Lane",
    "Prediction",
    "Preview",
    "Schedule",
    "Slot",
    "make_schedule",
    "predict",
    "preview",
    "subagent_not_passed",
    "topological_order",
]
RESTARTS = 24  # perturbed list schedules tried for DAGs of up to RESTART_LIMIT batches
RESTART_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Lane:
    index: int  # 0-based; shown as s1, s2, ...
    batch_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"l{self.index + 1}"


@dataclass(frozen=True, slots=True)
class Schedule:
    strategy: str
    workers: int
    lanes: tuple[Lane, ...]
    waits: dict[str, tuple[str, ...]]  # batch id -> dependencies that run on other lanes
    start: dict[str, float]  # estimated start (minutes) of each batch
    finish: dict[str, float]
    makespan: float
    serial: float
    critical_path: float

    @property
    def lower_bound(self) -> float:
        return max(self.critical_path, self.serial / self.workers)

    @property
    def predicted_speedup(self) -> float:
        return self.serial / self.makespan if self.makespan else 1.0

    def lane_of(self, batch_id: str) -> int:
        for s in self.lanes:
            if batch_id in s.batch_ids:
                return s.index
        raise KeyError(batch_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "workers": self.workers,
            "lanes": [{"index": s.index, "name": s.name, "batches": list(s.batch_ids)} for s in self.lanes],
            "waits": {k: list(v) for k, v in self.waits.items()},
            "start": self.start,
            "finish": self.finish,
            "makespan": self.makespan,
            "serial": self.serial,
            "critical_path": self.critical_path,
            "lower_bound": self.lower_bound,
            "predicted_speedup": self.predicted_speedup,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return cls(
            strategy=d["strategy"],
            workers=d["workers"],
            # "streams": a schedule journaled before the journal's schema 2 (an old run being resumed)
            lanes=tuple(Lane(s["index"], tuple(s["batches"])) for s in d.get("lanes") or d.get("streams") or ()),
            waits={k: tuple(v) for k, v in d["waits"].items()},
            start=dict(d["start"]),
            finish=dict(d["finish"]),
            makespan=d["makespan"],
            serial=d["serial"],
            critical_path=d["critical_path"],
        )


def make_schedule(plan: Plan, workers: int, strategy: str = "balanced", split: int | None = None, *,
                  depends: Mapping[str, Sequence[str]] | None = None) -> Schedule:
    """Lanes of whole batches. ``depends`` replaces the plan's declared dependencies (batch and agent level),
    e.g. with ``units.batch_dependencies(graph)`` to follow an ordering rule. ``split`` alone implies midpoint."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if split is not None:
        if strategy == "round-robin":
            raise UsageError("--split goes with --strategy midpoint")
        strategy = "midpoint"
    deps = {b.id: tuple(depends.get(b.id, ())) if depends is not None else b.all_depends_on for b in plan.batches}
    order = topological_order(plan, deps)
    est = {b.id: b.estimate if b.agents else 0.0 for b in plan.batches}

    if strategy == "midpoint":
        n = len(order)
        if split is not None and not 1 <= split < n:
            raise UsageError(f"--split must be between 1 and {n - 1} for a plan of {n} batches, got {split}")
        cut = split if split is not None else max(1, n // 2)  # the seed's cut: 5 batches -> 1,2 | 3,4,5
        groups = [order[:cut], order[cut:]] if workers >= 2 else [order]
    elif strategy == "round-robin":
        groups = [order[i::workers] for i in range(workers)]
    else:
        groups = _balanced(order, est, deps, workers)

    return _finish(strategy, workers, [g for g in groups if g], order, est, deps)


def topological_order(plan: Plan, deps: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Plan order, except that a batch always comes after its dependencies (stable Kahn's algorithm)."""
    deps = deps if deps is not None else {b.id: b.all_depends_on for b in plan.batches}
    index = {b.id: i for i, b in enumerate(plan.batches)}
    indeg = {b.id: len(deps[b.id]) for b in plan.batches}
    users: dict[str, list[str]] = {b.id: [] for b in plan.batches}
    for b in plan.batches:
        for d in deps[b.id]:
            users[d].append(b.id)
    ready = [index[b] for b, n in indeg.items() if n == 0]
    heapq.heapify(ready)
    ids = [b.id for b in plan.batches]
    out: list[str] = []
    while ready:
        bid = ids[heapq.heappop(ready)]
        out.append(bid)
        for u in users[bid]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, index[u])
    if len(out) != len(ids):  # parse_plan rejects cycles; this guards hand-built plans
        raise UsageError("the plan's dependencies contain a cycle")
    return out


def _balanced(
    order: list[str], est: dict[str, float], deps: dict[str, tuple[str, ...]], workers: int
) -> list[list[str]]:
    """Two list schedules, keep the better: critical-path-first (LPT when independent) and plan order."""
    rank = {b: i for i, b in enumerate(order)}
    users: dict[str, list[str]] = {b: [] for b in order}
    for b in order:
        for d in deps[b]:
            users[d].append(b)
    bottom: dict[str, float] = {}
    for b in reversed(order):
        bottom[b] = est[b] + max((bottom[u] for u in users[b]), default=0.0)

    by_priority = _list_schedule(order, est, deps, users, workers, key=lambda b: (-bottom[b], rank[b]))
    by_order = _list_schedule(order, est, deps, users, workers, key=lambda b: (rank[b], 0.0))
    # Candidates in order of preference at equal makespan: each list schedule with its lanes put back in
    # plan order, then (only when dependencies exist) the priority schedule in its own start-time order, which
    # keeps Graham's bound (work/m + (1 - 1/m) * critical path) where plan order would cost time.
    candidates = [[sorted(g, key=rank.__getitem__) for g in groups] for groups in (by_priority, by_order)]
    if any(deps.values()):
        candidates.append(by_priority)
        # Small DAGs: a few list schedules with critical-path priorities perturbed by a seeded (reproducible)
        # random factor often finish a few percent earlier than the plain one.
        if len(order) <= RESTART_LIMIT:
            rng = random.Random(0)
            for _ in range(RESTARTS):
                noise = {b: rng.uniform(0.8, 1.2) for b in order}
                candidates.append(
                    _list_schedule(order, est, deps, users, workers, key=lambda b: (-bottom[b] * noise[b], rank[b]))
                )
    scored = [(_simulate(groups, order, est, deps)[2], i, groups) for i, groups in enumerate(candidates)]
    return min(scored, key=lambda c: (c[0], c[1]))[2]


def _list_schedule(order, est, deps, users, workers, key) -> list[list[str]]:  # type: ignore[no-untyped-def]
    free = [0.0] * workers
    groups: list[list[str]] = [[] for _ in range(workers)]
    where: dict[str, int] = {}
    finish: dict[str, float] = {}
    missing = {b: len(deps[b]) for b in order}
    ready = [(key(b), b) for b in order if not deps[b]]
    heapq.heapify(ready)
    while ready:
        _, b = heapq.heappop(ready)
        avail = max((finish[d] for d in deps[b]), default=0.0)
        # Earliest start; among equal starts prefer a lane that already holds a dependency (no merge
        # needed), then the one that idles least (best fit), then the lowest index.
        best = min(range(workers), key=free.__getitem__)
        earliest = max(free[best], avail)
        own = [where[d] for d in deps[b] if max(free[where[d]], avail) == earliest]
        if own:
            best = max(own, key=free.__getitem__)
        elif free[best] < avail:
            best = max((f, -s) for s, f in enumerate(free) if f <= avail)[1] * -1
        start = max(free[best], avail)
        finish[b] = free[best] = start + est[b]
        where[b] = best
        groups[best].append(b)
        for u in users[b]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, (key(u), u))
    return groups


def _simulate(groups, order, est, deps):  # type: ignore[no-untyped-def]
    """Start and finish of every batch when each lane runs its batches in its order, waiting for
    dependencies on other lanes; and the makespan. Lanes are consistent with one topological order
    (that is what makes them deadlock-free), so repeatedly advancing any lane whose head is ready ends."""
    start: dict[str, float] = {}
    finish: dict[str, float] = {}
    last = [0.0] * len(groups)
    pos = [0] * len(groups)
    remaining = len(order)
    while remaining:
        progressed = False
        for s, g in enumerate(groups):
            while pos[s] < len(g) and all(d in finish for d in deps[g[pos[s]]]):
                b = g[pos[s]]
                start[b] = max([last[s], *(finish[d] for d in deps[b])])
                finish[b] = last[s] = start[b] + est[b]
                pos[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise AssertionError("schedule deadlocks: lanes are not consistent with one topological order")
    return start, finish, max(finish.values(), default=0.0)


def _finish(strategy, workers, groups, order, est, deps) -> Schedule:  # type: ignore[no-untyped-def]
    lanes = tuple(Lane(i, tuple(g)) for i, g in enumerate(groups))
    lane = {b: s.index for s in lanes for b in s.batch_ids}
    waits = {b: tuple(d for d in deps[b] if lane[d] != lane[b]) for b in order}
    start, finish, makespan = _simulate(groups, order, est, deps)
    longest: dict[str, float] = {}
    for b in order:
        longest[b] = est[b] + max((longest[d] for d in deps[b]), default=0.0)
    return Schedule(
        strategy=strategy,
        workers=workers,
        lanes=lanes,
        waits={b: w for b, w in waits.items() if w},
        start=start,
        finish=finish,
        makespan=makespan,
        serial=sum(est.values()),
        critical_path=max(longest.values(), default=0.0),
    )


# --- predictions over the unit graph: the run state on the estimates (distpar.core.predict) -------------------


def predict(graph: UnitGraph, workers: int, strategy: str = "balanced") -> Prediction:
    """The run of ``graph`` with ``workers`` workers, by the estimates (minutes): what ``distpar plan`` shows."""
    return predict_graph(graph, workers, strategy)


# How a unit's subagent_type reaches the agent, as one phrase for the dry run. A hook: the coordinator passes
# the function that knows the agent (claude's --agent NAME when .claude/agents/NAME.md exists, ...).
SubagentHow = Callable[[str], str]


def subagent_not_passed(subagent_type: str) -> str:
    if subagent_type == "main":
        return "the agent does the work itself"
    return "not passed to the agent (the prompt is given verbatim)"


@dataclass(frozen=True, slots=True)
class Overlap:
    path: str
    uids: tuple[str, str]  # two units that may run at the same time and both own ``path``


@dataclass(frozen=True, slots=True)
class Preview:
    """Everything ``distpar plan`` and ``run --dry-run`` show, as data."""

    graph: UnitGraph
    prediction: Prediction
    overlaps: tuple[Overlap, ...] = ()
    path_warnings: tuple[str, ...] = ()
    subagents: dict[str, str] = field(default_factory=dict)  # subagent_type -> how it reaches the agent

    def warnings(self) -> list[str]:
        out = list(self.graph.notes)
        out += [f"units {o.uids[0]} and {o.uids[1]} may run at the same time and both own {o.path}: a conflict "
                "is likely (declare depends_on between their batches, or make the batch sequential)"
                for o in self.overlaps]
        return out + list(self.path_warnings)

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph.to_dict(), "prediction": self.prediction.to_dict(),
                "overlaps": [{"path": o.path, "units": list(o.uids)} for o in self.overlaps],
                "subagents": dict(self.subagents), "warnings": self.warnings()}


def preview(graph: UnitGraph, workers: int, *, strategy: str = "balanced", repo_root: str | None = None,
            plan_path: str | None = None, subagent: SubagentHow = subagent_not_passed) -> Preview:
    return Preview(
        graph=graph,
        prediction=predict(graph, workers, strategy),
        overlaps=tuple(owned_overlaps(graph, repo_root)),
        path_warnings=tuple(prompt_path_warnings(graph, repo_root, plan_path)),
        subagents={s: subagent(s) for s in dict.fromkeys(u.subagent_type for u in graph.units if u.subagent_type)},
    )


def owned_overlaps(graph: UnitGraph, repo_root: str | None = None) -> list[Overlap]:
    """Pairs of units that own the same file (``owns_files``) and that nothing orders: they may run at once."""
    owners: dict[str, list[str]] = {}
    for u in graph.units:
        for f in dict.fromkeys(u.owns_files):
            owners.setdefault(repo_relative(f, repo_root) or f, []).append(u.uid)
    shared = {f: us for f, us in owners.items() if len(us) > 1}
    if not shared:
        return []
    bit = {u.uid: 1 << i for i, u in enumerate(graph.units)}
    ancestors: dict[str, int] = {}
    for u in graph.units:  # topological order: a unit's dependencies come first
        acc = 0
        for d in u.depends_on:
            acc |= ancestors[d] | bit[d]
        ancestors[u.uid] = acc
    out: list[Overlap] = []
    for f, us in shared.items():
        for i, a in enumerate(us):
            for b in us[i + 1 :]:
                ordered = ancestors[b] & bit[a] or ancestors[a] & bit[b]
                same_lane = graph.unit(a).pin is not None and graph.unit(a).pin == graph.unit(b).pin
                if not ordered and not same_lane:
                    out.append(Overlap(f, (a, b)))
    return out


_ABSOLUTE = re.compile(r"(?<![\w.~/:-])(~?/[\w.@+-]+(?:/[\w.@+-]+)+)")
_SYSTEM = ("/dev/", "/proc/", "/sys/")


def prompt_path_warnings(graph: UnitGraph, repo_root: str | None, plan_path: str | None = None) -> list[str]:
    """Absolute paths in prompts: into the author's checkout (the agent works in a worktree elsewhere), or
    outside the repository (the worktree does not have them). Both defeat the isolation of a worktree."""
    out: list[str] = []
    for u in graph.units:
        for path in dict.fromkeys(_ABSOLUTE.findall(u.prompt)):
            if path.startswith(_SYSTEM):
                continue
            if plan_path and (path == plan_path or path.rsplit("/", 1)[-1] == plan_path.rsplit("/", 1)[-1]):
                why = "is the plan file, outside the agent's worktree"
            elif repo_relative(path, repo_root) is not None:
                why = "points into your checkout, not the agent's worktree: use a path relative to the repository"
            else:
                why = "is outside the repository: the agent's worktree does not have it"
            out.append(f"unit {u.uid} (line {u.line}): the prompt's absolute path {path} {why}")
    return out
