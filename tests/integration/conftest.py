from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distpar.backends.base import Backend
from distpar.coordinator import executor, runtime
from distpar.coordinator.journal import Journal
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.core.model import AgentConfig
from distpar.testing.builders import sh_git, write_plan


def run_plan(repo: Path, batches: list[dict[str, Any]], workers: int = 1, strategy: str = "balanced",
             backend: str | Backend = "local", backend_options: dict[str, Any] | None = None,
             observer: Any = None, independent_plan: bool = True,
             **options: Any) -> tuple[runtime.RunReport, executor.Runner]:
    """Run a plan through the Python API (the same objects the CLI assembles). ``independent_plan``: the plan
    says its batches need not wait for each other (False: the CAST default, ordered stages). ``backend``: a
    name, or a Backend object of the test's own (the fake backend with its script)."""
    plan_path = write_plan(repo.parent / f"plan-{workers}-{len(batches)}.md", batches, independent=independent_plan)
    options.setdefault("agent", AgentConfig(preset="fake"))
    name = backend if isinstance(backend, str) else backend.name
    opts = RunOptions(backend=name, backend_options=backend_options or {}, **options)
    prepared = prepare_run(plan_path, opts, repo=repo, workers=workers, strategy=strategy, observer=observer,
                           backend=None if isinstance(backend, str) else backend)
    return prepared.run(), prepared.runner


def journal() -> Journal:
    """The journal of this test's runs."""
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def commit(repo: Path, files: dict[str, str], msg: str = "setup") -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    sh_git(repo, "add", "--all")
    sh_git(repo, "commit", "-q", "-m", msg)
