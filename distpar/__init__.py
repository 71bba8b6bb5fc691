"""distpar: run multi-batch AI coding plans in parallel, locally, on Ray or over SSH."""

from __future__ import annotations

__version__ = "0.1.0"


def run(*args, **kwargs):  # type: ignore[no-untyped-def]
    """``distpar.run(plan, workers=4, agent=...)``: see ``distpar.api.run``."""
    from distpar.api import run as _run

    return _run(*args, **kwargs)
