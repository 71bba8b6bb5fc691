"""Summaries of repeated measurements: median and spread (min, max), never a lone number."""

from __future__ import annotations

import statistics
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
