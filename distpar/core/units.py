"""Plan -> UnitGraph: what runs as one agent session (a unit) and what each unit waits for. Pure code.

Ordering rules (``UnitGraph.rule``; ``UnitGraph.why`` says which applied and why):

- ``stages``: no ``depends_on`` anywhere. The CAST protocol's order: batches are stages in array order, each
  gated by the one before it. The units of batch k wait for the final units of the previous batch that has
  agents (fan-in).
- ``dag``: some batch or agent declares ``depends_on``. Each batch waits for the batches it (or, for one agent,
  that agent) names; batches that declare nothing are roots.
- ``independent`` (``--independent`` or ``"independent": true``): the seed's assumption. Batches wait for no
  other batch except for what ``depends_on`` declares.
- ``midpoint`` (``--strategy midpoint`` / ``--split K``): the seed exactly. The batches are cut after
  floor(n/2) (or K): each half is one chain in plan order, pinned to its own worker (``pin`` 0 or 1), the
  halves independent of each other; ``depends_on`` is not honoured (``UnitGraph.notes`` lists what is lost).

Inside a batch: one agent is one unit named by the batch id. Several agents are units ``<id>#<k>`` (k from 1):
with ``parallel: true`` (or ``type: fan-out``) they do not wait for each other, else each waits for the one
before it. A dependency on a batch is one on its final units (all of a parallel batch's, the last of a
sequential one); a batch with ``agents: []`` has no units, and a dependency on it is one on what it depends
on. A batch after a ``type: fan-out`` batch also waits for it (it gets the fan-out's answers).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distpar.core.errors import UsageError
from distpar.core.plan import Batch, Plan

STRATEGIES = ("balanced", "midpoint", "round-robin")
RULES = ("stages", "dag", "independent", "midpoint")
GRAPH_VERSION = 1


@dataclass(frozen=True, slots=True)
class Unit:
    uid: str  # the batch id when the batch is one unit; f"{batch_id}#{k}" (k=1..n) for agent k of a batch whose
    # agents run as separate units (validation refuses a batch id equal to one)
    batch_id: str
    index: int | None  # 1-based agent index, None when the unit is the whole batch
    description: str
    prompt: str
    subagent_type: str | None
    depends_on: tuple[str, ...]  # uids, resolved from the ordering rule
    estimate: float  # minutes
    agent: str | None  # preset/template override
    timeout: float | None
    owns_files: tuple[str, ...]
    line: int
    pin: int | None = None  # worker index when the strategy pins units to workers (midpoint/--split)

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "batch_id": self.batch_id, "index": self.index, "description": self.description,
                "prompt": self.prompt, "subagent_type": self.subagent_type, "depends_on": list(self.depends_on),
                "estimate": self.estimate, "agent": self.agent, "timeout": self.timeout,
                "owns_files": list(self.owns_files), "line": self.line, "pin": self.pin}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Unit:
        return cls(d["uid"], d["batch_id"], d.get("index"), d.get("description", ""), d["prompt"],
                   d.get("subagent_type"), tuple(d.get("depends_on", ())), float(d["estimate"]), d.get("agent"),
                   d.get("timeout"), tuple(d.get("owns_files", ())), int(d.get("line", 0)), d.get("pin"))


@dataclass(frozen=True, slots=True)
class UnitGraph:
    units: tuple[Unit, ...]  # a topological order close to plan order
    rule: str  # "stages" | "dag" | "independent" | "midpoint"
    why: str  # one sentence distpar plan / --dry-run prints
    notes: tuple[str, ...] = ()  # what the rule does not honour (midpoint: declared depends_on; lost fan-outs)
    _by_uid: dict[str, Unit] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_uid", {u.uid: u for u in self.units})

    def unit(self, uid: str) -> Unit:
        return self._by_uid[uid]

    def of_batch(self, batch_id: str) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.batch_id == batch_id)

    @property
    def uids(self) -> list[str]:
        return [u.uid for u in self.units]

    def to_dict(self) -> dict[str, Any]:
        return {"version": GRAPH_VERSION, "rule": self.rule, "why": self.why, "notes": list(self.notes),
                "units": [u.to_dict() for u in self.units]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitGraph:
        if d.get("version", GRAPH_VERSION) != GRAPH_VERSION:
            raise ValueError(f"unit graph version {d.get('version')} (this distpar reads {GRAPH_VERSION})")
        return cls(tuple(Unit.from_dict(u) for u in d["units"]), d["rule"], d["why"], tuple(d.get("notes", ())))


def uid_of(batch: Batch, k: int) -> str:
    """The uid of agent ``k`` (1-based) of ``batch``."""
    return batch.id if len(batch.agents) == 1 else f"{batch.id}#{k}"


def unit_graph(plan: Plan, *, independent: bool = False, strategy: str = "balanced",
               split: int | None = None) -> UnitGraph:
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if split is not None and strategy == "round-robin":
        raise UsageError("--split goes with --strategy midpoint")
    if strategy == "midpoint" or split is not None:
        return _midpoint(plan, split)
    if independent or plan.independent:
        rule = "independent"
        why = ("--independent" if independent else '"independent": true in the plan') + \
            ": batches do not wait for each other" + \
            (", except for what depends_on declares" if plan.declares_dependencies else "")
    elif plan.declares_dependencies:
        rule = "dag"
        declared = [b.id for b in plan.batches if b.depends_declared or any(a.depends_declared for a in b.agents)]
        roots = [b.id for b in plan.batches if not b.all_depends_on and b.agents]
        why = (f"depends_on declared (batch {_ids(declared)}): a DAG in which batches that declare none "
               f"({_ids(roots) or 'none'}) start at once")
    else:
        rule = "stages"
        why = ("no depends_on declared: batches run as ordered stages, each after the one before it (the CAST "
               "protocol); --independent says they need not wait")
    units = _build(plan, stages=rule == "stages")
    return UnitGraph(_topological(units), rule, why)


def _build(plan: Plan, *, stages: bool) -> list[Unit]:
    finals: dict[str, tuple[str, ...]] = {}  # batch id -> the uids a dependency on that batch waits for
    units: list[Unit] = []
    previous: tuple[str, ...] = ()  # stages: the final units of the previous batch with agents
    batches = {b.id: b for b in plan.batches}
    fan_out = {b.id: a.id for a, b in zip(plan.batches, plan.batches[1:], strict=False)
               if a.type == "fan-out" and a.agents}  # batch -> the fan-out batch right before it
    for bid in batch_order(plan):
        b = batches[bid]
        if not b.agents:
            finals[bid] = previous if stages else _union(finals[d] for d in b.all_depends_on)
            continue
        upstream = previous if stages else _union(finals[d] for d in b.depends_on)
        source = fan_out.get(bid)
        if source and not stages and source in finals:  # (not when the fan-out batch itself waits for this one)
            upstream = _union([upstream, finals[source]])
        mine: list[str] = []
        for k, a in enumerate(b.agents, 1):
            uid = uid_of(b, k)
            own = () if stages else _union(finals[d] for d in a.depends_on)
            deps = _union([upstream, own]) if b.concurrent or k == 1 else _union([(mine[-1],), own])
            units.append(_unit(b, k, deps))
            mine.append(uid)
        finals[bid] = tuple(mine) if b.concurrent else (mine[-1],)
        previous = finals[bid]
    return units


def _unit(b: Batch, k: int, deps: tuple[str, ...], pin: int | None = None) -> Unit:
    a = b.agents[k - 1]
    n = len(b.agents)
    estimate = a.estimate if a.estimate is not None else (b.estimate if b.concurrent else b.estimate / n)
    return Unit(uid=uid_of(b, k), batch_id=b.id, index=None if n == 1 else k, description=b.description,
                prompt=a.prompt, subagent_type=a.subagent_type, depends_on=deps, estimate=estimate,
                agent=a.agent or b.agent, timeout=a.timeout or b.timeout, owns_files=a.owns_files,
                line=a.line or b.line, pin=pin)


def _midpoint(plan: Plan, split: int | None) -> UnitGraph:
    n = len(plan.batches)
    if split is not None and not 1 <= split < n:
        raise UsageError(f"--split must be between 1 and {n - 1} for a plan of {n} batches, got {split}")
    cut = split if split is not None else max(1, n // 2)  # the seed: BATCH_COUNT / 2, at least 1
    halves = [plan.batches[:cut], plan.batches[cut:]]
    units: list[Unit] = []
    half_of = {b.id: h for h, half in enumerate(halves) for b in half}
    position = {b.id: i for i, b in enumerate(plan.batches)}
    fan_out = {b.id: a.id for a, b in zip(plan.batches, plan.batches[1:], strict=False)
               if a.type == "fan-out" and a.agents}
    notes: list[str] = []
    for h, half in enumerate(halves):
        last: tuple[str, ...] = ()
        for b in half:
            for d in b.all_depends_on:
                if half_of[d] != h or position[d] > position[b.id]:
                    where = "the other half" if half_of[d] != h else "later in the same half"
                    notes.append(f"batch {b.id} depends on {d}, which runs in {where}: midpoint does not wait")
            source = fan_out.get(b.id)
            if source and half_of[source] != h:
                notes.append(f"batch {b.id} follows fan-out batch {source} across the cut: it gets no fan-out "
                             "summary")
            for k in range(1, len(b.agents) + 1):
                units.append(_unit(b, k, last, pin=h))
                last = (units[-1].uid,)
    flag = f"--split {split}" if split is not None else "--strategy midpoint"
    shown = " | ".join(_ids([b.id for b in half]) or "(empty)" for half in halves)
    why = f"{flag}: the seed's split ({shown}), each half one chain in plan order, the halves independent"
    return UnitGraph(tuple(units), "midpoint", why, tuple(notes))


def batch_order(plan: Plan) -> list[str]:
    """Plan order, except that a batch comes after every batch it or its agents depend on (stable Kahn)."""
    index = {b.id: i for i, b in enumerate(plan.batches)}
    deps = {b.id: b.all_depends_on for b in plan.batches}
    return _kahn([b.id for b in plan.batches], deps, index.__getitem__)


def _topological(units: list[Unit]) -> tuple[Unit, ...]:
    position = {u.uid: i for i, u in enumerate(units)}
    by_uid = {u.uid: u for u in units}
    order = _kahn([u.uid for u in units], {u.uid: u.depends_on for u in units}, position.__getitem__)
    return tuple(by_uid[x] for x in order)


def _kahn(nodes: list[str], deps: Mapping[str, Iterable[str]], rank: Any) -> list[str]:
    users: dict[str, list[str]] = {x: [] for x in nodes}
    missing: dict[str, int] = {}
    for x in nodes:
        ds = list(dict.fromkeys(deps[x]))
        missing[x] = len(ds)
        for d in ds:
            users[d].append(x)
    ready = [(rank(x), x) for x in nodes if missing[x] == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, x = heapq.heappop(ready)
        out.append(x)
        for u in users[x]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, (rank(u), u))
    if len(out) != len(nodes):  # parse_plan refuses cycles; this guards hand-built plans
        raise UsageError("the plan's dependencies contain a cycle")
    return out


def batch_dependencies(graph: UnitGraph) -> dict[str, tuple[str, ...]]:
    """The unit graph seen per batch: batch id -> the other batches its units wait for (for a coordinator
    that still runs a whole batch as one session)."""
    batch_of = {u.uid: u.batch_id for u in graph.units}
    out: dict[str, list[str]] = {}
    for u in graph.units:
        row = out.setdefault(u.batch_id, [])
        for d in u.depends_on:
            if batch_of[d] != u.batch_id and batch_of[d] not in row:
                row.append(batch_of[d])
    return {k: tuple(v) for k, v in out.items()}


def _union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for g in groups for x in g))


def _ids(ids: list[str], limit: int = 8) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def with_fan_out_summary(prompt: str, source: str, answers: Mapping[str, str], graph: UnitGraph) -> str:
    """``prompt`` with the CAST Fan-out Summary of batch ``source`` in front: one line per agent, in agent
    order, from ``answers`` (uid -> the agent's final answer; its first line is kept, as the protocol's "main
    finding in one sentence"). For every unit of the batch right after a ``type: fan-out`` batch."""
    lines = [f"Fan-out Summary (Batch {source}):"]
    for u in graph.of_batch(source):
        answer = (answers.get(u.uid) or "").strip()
        first = answer.splitlines()[0] if answer else "(no answer)"
        lines.append(f"- {u.subagent_type or u.uid}: {first}")
    return "\n".join(lines) + "\n\n" + prompt
