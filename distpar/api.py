"""The Python API: run a plan from your own code, with a preset of your own if you like.

    import distpar
    from distpar.agents import Preset

    report = distpar.run("plan.md", workers=4, agent=MyAgent())   # MyAgent: a Preset defined in your code

The same objects the CLI assembles, and the same guarantees; nothing is printed. A preset defined in your own
code travels to SSH and Ray workers by value (cloudpickle), so the workers need not be able to import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distpar import agents
from distpar.coordinator.runtime import Observer, RunOptions, RunReport, open_journal
from distpar.core.model import AgentConfig


def run(plan: str | Path, *, repo: str | Path = ".", workers: int = 4, agent: str | AgentConfig | Any = "claude",
        backend: str = "local", backend_options: dict[str, Any] | None = None, strategy: str = "balanced",
        split: int | None = None, independent: bool = False, observer: Observer | None = None,
        **options: Any) -> RunReport:
    """Run ``plan`` on ``repo`` and return its RunReport. ``agent``: a preset name, an AgentConfig, or a
    ``distpar.agents.Preset`` object of your own; ``options``: any other RunOptions field (``timeout``,
    ``budget_usd``, ``setup``, ``verify``, ...). Bad input raises a DistparError before anything runs."""
    from distpar.backends import make_backend
    from distpar.coordinator.executor import Runner
    from distpar.coordinator.preflight import preflight
    from distpar.core.plan import load_plan
    from distpar.core.schedule import make_schedule

    if isinstance(agent, agents.Preset):
        cfg = agents.custom_agent(agent)
    elif isinstance(agent, AgentConfig):
        cfg = agent
    else:
        cfg = agents.agent_config(str(agent), AgentConfig())
    parsed = load_plan(plan)
    schedule = make_schedule(parsed, workers, strategy, split)
    opts = RunOptions(agent=cfg, backend=backend, plan_path=str(Path(plan).resolve()),
                      backend_options=dict(backend_options or {}), independent=independent, split=split,
                      into=options.pop("into", None) or parsed.target_branch, **options)
    root, target, start = preflight(repo, opts, parsed)
    journal = open_journal(root)
    try:
        runner = Runner(root, parsed, schedule, opts, make_backend(backend, opts.backend_options), journal, target,
                        start, observer)
        return runner.run()
    finally:
        journal.close()
