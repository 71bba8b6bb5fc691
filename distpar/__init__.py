"""distpar: run multi-batch AI coding plans in parallel, locally, on Ray or over SSH."""

from __future__ import annotations

__version__ = "0.1.0"
