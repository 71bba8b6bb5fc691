"""The unit graph as the run state sees it: what each unit depends on, its priority (the critical path by
estimate from it to the end), its place in plan order, and its pin."""

from __future__ import annotations

from distpar.core.state import UnitInfo, critical_path
from distpar.core.units import UnitGraph


def state_units(graph: UnitGraph, strategy: str = "balanced", workers: int = 1) -> list[UnitInfo]:
    """``midpoint`` keeps the graph's own pins (the seed's two halves); ``round-robin`` (for comparison) deals
    the units out to the workers in plan order; otherwise nothing is pinned: free workers take ready units."""
    ranked = critical_path((u.uid, u.depends_on, u.estimate) for u in graph.units)
    out = []
    for i, u in enumerate(graph.units):
        pin = u.pin if graph.rule == "midpoint" else (i % max(1, workers) if strategy == "round-robin" else None)
        out.append(UnitInfo(u.uid, u.depends_on, ranked[u.uid], i, pin))
    return out
