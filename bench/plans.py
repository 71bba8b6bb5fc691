"""Plan shapes for the benchmarks, as pure data: a list of ``Node`` (id, seconds, dependencies).

The same shape becomes a ``Plan`` for the pure scheduler (``to_plan``) or a manifest for a real run with the
fake agent (``to_batches``: each batch sleeps its seconds and writes one file of its own). Durations are in
seconds. A node's ``estimate`` (seconds; the plan carries it in minutes) is what the plan tells the scheduler:
the shapes set it to the true duration; ``with_estimates`` makes plans that give none, wrong ones or exact ones.

Plans list batches grouped by feature (a chain at a time), the way people write them: that is the order the
seed's midpoint split cuts in two.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from distpar.core.plan import DEFAULT_ESTIMATE, AgentTask, Batch, Plan
from distpar.testing.builders import fake_batch, plan_text

SHAPES = ("independent-equal", "independent-heavy-tailed", "chains", "diamonds", "mixed-dag")
ESTIMATES = ("none", "wrong", "exact")


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    seconds: float
    deps: tuple[str, ...] = ()
    estimate: float | None = None  # seconds, as the plan states it; None: the plan gives no estimate


def make_shape(shape: str, n: int, unit: float = 1.0, seed: int = 7) -> list[Node]:
    """``n`` batches (about ``n`` for chains and diamonds) of the named shape; ``unit`` scales durations."""
    builders = {
        "independent-equal": lambda: independent(n, unit),
        "independent-heavy-tailed": lambda: heavy_tailed(n, unit, seed),
        "chains": lambda: chains(n, unit, seed),
        "diamonds": lambda: diamonds(n, unit, seed),
        "mixed-dag": lambda: mixed_dag(n, unit, seed),
    }
    if shape not in builders:
        raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    return with_estimates(builders[shape](), "exact")


def spread(n: int, low: float, high: float, seed: int = 11) -> list[Node]:
    """``n`` independent batches whose durations spread from ``low`` to ``high`` seconds (log-uniform, seeded,
    stretched so that the shortest is ``low`` and the longest ``high``), in random order; no estimates."""
    rng = random.Random(seed)
    raw = [rng.random() for _ in range(n)]
    lo, hi = min(raw), max(raw)
    ratio = high / low
    return [Node(f"b{i}", round(low * ratio ** ((r - lo) / (hi - lo) if hi > lo else 0.0), 3))
            for i, r in enumerate(raw, 1)]


def with_estimates(nodes: list[Node], mode: str, seed: int = 23) -> list[Node]:
    """The same plan with no estimates (``none``), estimates unrelated to the durations (``wrong``: a seeded
    shuffle of the real durations, so they span the same range but belong to other batches) or ``exact``."""
    if mode == "none":
        return [replace(x, estimate=None) for x in nodes]
    if mode == "exact":
        return [replace(x, estimate=x.seconds) for x in nodes]
    if mode == "wrong":
        values = [x.seconds for x in nodes]
        random.Random(seed).shuffle(values)
        return [replace(x, estimate=v) for x, v in zip(nodes, values, strict=True)]
    raise ValueError(f"unknown estimate mode {mode!r} (known: {', '.join(ESTIMATES)})")


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties broken by position): how related wrong estimates are to the truth."""
    def ranks(v: list[float]) -> list[int]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0] * len(v)
        for r, i in enumerate(order):
            out[i] = r
        return out

    n = len(a)
    if n < 2:
        return 0.0
    ra, rb = ranks(a), ranks(b)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def stages(durations: list[list[float]]) -> list[Node]:
    """A staged plan written as batches with explicit ``depends_on``: batch ``s<k>a<j>`` (stage k, agent j)
    depends on every batch of stage k - 1. The same order a CAST plan of one batch per stage states without
    any ``depends_on`` (see ``cast_manifest``). Estimates are exact."""
    nodes: list[Node] = []
    previous: tuple[str, ...] = ()
    for k, stage in enumerate(durations, 1):
        ids = tuple(f"s{k}a{j}" for j in range(1, len(stage) + 1))
        nodes += [Node(i, s, previous, s) for i, s in zip(ids, stage, strict=True)]
        previous = ids
    return nodes


def cast_manifest(durations: list[list[float]], nonce: str) -> list[dict[str, Any]]:
    """The CAST form of ``stages``: one batch per stage, in order, no ``depends_on``; a stage of several agents
    is a ``parallel: true`` batch. Agent j of stage k sleeps its seconds and writes ``bench/<nonce>/s<k>a<j>.txt``
    (the file ``stages`` would write), so the work of every stage can be looked for in the later ones."""
    out = []
    for k, stage in enumerate(durations, 1):
        agents = [{"subagent_type": "general-purpose",
                   "prompt": f"Stage {k}, agent {j}.\n@fake sleep {s:g}\n"
                             f"@fake write \"bench/{nonce}/s{k}a{j}.txt\" \"{nonce} s{k}a{j}\\n\""}
                  for j, s in enumerate(stage, 1)]
        out.append({"id": f"stage{k}", "description": f"stage {k}", "parallel": len(stage) > 1, "agents": agents,
                    "estimate": max(stage) / 60.0})
    return out


def independent(n: int, seconds: float) -> list[Node]:
    return [Node(f"b{i}", seconds) for i in range(1, n + 1)]


def heavy_tailed(n: int, unit: float, seed: int) -> list[Node]:
    """Independent batches with Pareto(1.2) durations (a few batches much longer than the rest), capped at 20x."""
    rng = random.Random(seed)
    return [Node(f"b{i}", round(unit * min(20.0, rng.paretovariate(1.2)), 3)) for i in range(1, n + 1)]


def chains(n: int, unit: float, seed: int, k: int = 4) -> list[Node]:
    """``k`` independent chains of about ``n / k`` batches each, listed chain after chain."""
    rng = random.Random(seed)
    length = max(1, n // k)
    nodes: list[Node] = []
    for c in range(1, k + 1):
        for i in range(1, length + 1):
            deps = (f"c{c}-{i - 1}",) if i > 1 else ()
            nodes.append(Node(f"c{c}-{i}", round(unit * rng.uniform(0.7, 1.3), 3), deps))
    return nodes


def diamonds(n: int, unit: float, seed: int, width: int = 3) -> list[Node]:
    """Fork-join stages: a join batch, ``width`` batches that depend on it, the next join depends on them all."""
    rng = random.Random(seed)
    nodes = [Node("j0", unit)]
    stage = 0
    while len(nodes) + width + 1 <= max(n, width + 2):
        stage += 1
        mids = [f"d{stage}-{w}" for w in range(1, width + 1)]
        nodes += [Node(m, round(unit * rng.uniform(0.5, 2.0), 3), (f"j{stage - 1}",)) for m in mids]
        nodes.append(Node(f"j{stage}", unit, tuple(mids)))
    return nodes


def mixed_dag(n: int, unit: float, seed: int) -> list[Node]:
    """A realistic plan: a setup batch; feature chains of about four batches with log-normal durations, some
    batches also needing a batch of an earlier feature (cross-worker dependencies); a final integration batch
    that needs every feature."""
    rng = random.Random(seed)
    n = max(n, 6)
    body = n - 2
    k = max(3, body // 4)
    lengths = [body // k + (1 if c < body % k else 0) for c in range(k)]
    nodes = [Node("setup", unit)]
    feature_ids: list[list[str]] = []
    for c, length in enumerate(lengths, 1):
        ids: list[str] = []
        for i in range(1, length + 1):
            bid = f"f{c}-{i}"
            deps = [ids[-1]] if ids else ["setup"]
            if feature_ids and rng.random() < 0.25:
                other = rng.choice(feature_ids)
                deps.append(other[min(len(other), i) - 1])
            seconds = round(unit * min(4.0, max(0.3, rng.lognormvariate(0.0, 0.6))), 3)
            nodes.append(Node(bid, seconds, tuple(deps)))
            ids.append(bid)
        feature_ids.append(ids)
    nodes.append(Node("integrate", unit, tuple(ids[-1] for ids in feature_ids)))
    return nodes


def total_seconds(nodes: list[Node]) -> float:
    return sum(x.seconds for x in nodes)


def to_plan(nodes: list[Node], plan_id: str = "bench") -> Plan:
    """A ``Plan`` for the pure scheduler, built directly (no text, no parsing): independent batches but for
    their declared dependencies, as the benchmark's plan files say."""
    task = (AgentTask("general-purpose", "benchmark batch"),)
    batches = tuple(Batch(x.id, x.id, task, depends_on=x.deps, estimate=_minutes(x)) for x in nodes)
    return Plan(plan_id, batches, "<bench>", any(x.deps for x in nodes), independent=True)


def to_batches(nodes: list[Node], nonce: str) -> list[dict[str, Any]]:
    """Manifest batches for a real run: the fake agent sleeps each batch's seconds and writes one file named
    after the run (``nonce``), so no two batches or runs conflict and every batch makes a commit. A node
    without an estimate gives none in the plan."""
    out = []
    for x in nodes:
        fields: dict[str, Any] = {"depends_on": list(x.deps)}
        if x.estimate is not None:
            fields["estimate"] = _minutes(x)
        out.append(fake_batch(x.id, writes={f"bench/{nonce}/{x.id}.txt": f"{nonce} {x.id}\n"}, sleep=x.seconds,
                              **fields))
    return out


def _minutes(x: Node) -> float:
    return DEFAULT_ESTIMATE if x.estimate is None else max(x.estimate, 0.001) / 60.0


def plan_document(nodes: list[Node], nonce: str = "scale") -> str:
    """The plan file text (markdown with the dispatch block), for timing the parser."""
    return plan_text(to_batches(nodes, nonce), plan_id=f"bench-{nonce}")

