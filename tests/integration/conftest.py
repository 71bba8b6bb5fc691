from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distpar.backends import make_backend
from distpar.coordinator import executor, preflight, runtime
from distpar.core.model import AgentConfig
from distpar.core.plan import load_plan
from distpar.core.schedule import make_schedule
from distpar.testing.builders import write_plan

pytestmark = pytest.mark.integration


def run_plan(repo: Path, batches: list[dict[str, Any]], workers: int = 1, strategy: str = "balanced",
             backend: str = "local", backend_options: dict[str, Any] | None = None,
             observer: Any = None, independent_plan: bool = True,
             **options: Any) -> tuple[runtime.RunReport, executor.Runner]:
    """Run a plan through the Python API (the same objects the CLI assembles). ``independent_plan``: the plan
    says its batches need not wait for each other (False: the CAST default, ordered stages)."""
    plan_path = write_plan(repo.parent / f"plan-{workers}-{len(batches)}.md", batches, independent=independent_plan)
    plan = load_plan(plan_path)
    schedule = make_schedule(plan, workers, strategy)
    options.setdefault("agent", AgentConfig(preset="fake"))
    opts = runtime.RunOptions(backend=backend, plan_path=str(plan_path), **options)
    root, target, start = preflight.preflight(repo, opts)
    journal = runtime.open_journal(root)
    runner = executor.Runner(root, plan, schedule, opts, make_backend(backend, backend_options or {}), journal,
                            target, start, observer)
    try:
        return runner.run(), runner
    finally:
        journal.close()
