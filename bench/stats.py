"""Summaries of repeated measurements: median and spread (min, max), never a lone number."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Hashable, Iterable
from typing import Any


def summary(values: list[float], digits: int = 4) -> dict[str, Any]:
    """Median, min, max and every value (so the JSON keeps each repetition)."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "values": [round(v, digits) for v in values],
    }


def spread(s: dict[str, Any]) -> str:
    """'median (min-max)' for a table cell."""
    if not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.2f}"
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def ratio_range(num: dict[str, Any], den: dict[str, Any]) -> dict[str, float]:
    """A ratio of two repeated measurements: median/median, and the extremes min/max .. max/min."""
    return {
        "median": round(num["median"] / den["median"], 4),
        "min": round(num["min"] / den["max"], 4),
        "max": round(num["max"] / den["min"], 4),
    }


def actual_bound(nodes: list[Any], timeline: list[list[Any]], workers: int) -> float:
    """The lower bound of a run with the durations its agents really took (each unit's agent process, start to
    end, from the run's timeline): max(critical path, work / workers). This is the best any scheduler could do
    with those agents; the bound from the requested sleeps leaves out each agent's own start-up (the fake
    agent's Python start, 0.05-0.15 s a unit here), which no scheduler can remove."""
    took = {row[0]: max(0.0, float(row[3]) - float(row[2])) for row in timeline}
    by_id = {x.id: x for x in nodes}
    finish: dict[str, float] = {}

    def end(uid: str) -> float:
        if uid not in finish:
            x = by_id[uid]
            finish[uid] = took.get(uid, x.seconds) + max((end(d) for d in x.deps), default=0.0)
        return finish[uid]

    for x in nodes:
        end(x.id)
    return max(max(finish.values(), default=0.0), sum(took.get(x.id, x.seconds) for x in nodes) / max(1, workers))


def min_median_max(values: Iterable[float], digits: int = 3) -> list[float]:
    """[min, median, max] (the upper median), [] for no values."""
    v = sorted(values)
    return [round(v[0], digits), round(v[len(v) // 2], digits), round(v[-1], digits)] if v else []


def idle_between(spans: Iterable[tuple[Hashable, float, float]]) -> list[float]:
    """The seconds each slot stood between one span's end and its next span's start, for (slot, start, end)."""
    slots: dict[Hashable, list[tuple[float, float]]] = {}
    for slot, start, end in spans:
        slots.setdefault(slot, []).append((start, end))
    return [b[0] - a[1] for v in slots.values() for a, b in itertools.pairwise(sorted(v))]
