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
from distpar.coordinator.options import RunOptions
from distpar.coordinator.runtime import RunReport
from distpar.coordinator.site import Observer
from distpar.core.model import AgentConfig


def run(plan: str | Path, *, repo: str | Path = ".", workers: int | None = None,
        agent: str | AgentConfig | Any = "claude", backend: str = "local",
        backend_options: dict[str, Any] | None = None, strategy: str = "balanced", observer: Observer | None = None,
        **options: Any) -> RunReport:
    """Run ``plan`` on ``repo`` and return its RunReport. ``agent``: a preset name, an AgentConfig, or a
    ``distpar.agents.Preset`` object of your own; ``options``: any other run option (``distpar.coordinator.options.
    RunOptions``: ``timeout``, ``budget_usd``, ``setup``, ``verify``, ``split``, ``independent``, ...), each as the
    CLI's flag of that name would set it, over the repository's ``[tool.distpar]``. Bad input raises a DistparError
    before anything runs; what the checks found worth saying is in ``report.warnings``."""
    from distpar.coordinator.prepare import prepare_run

    if isinstance(agent, agents.Preset):
        cfg = agents.custom_agent(agent)
    elif isinstance(agent, AgentConfig):
        cfg = agent
    else:
        cfg = agents.agent_config(str(agent), AgentConfig())
    opts = RunOptions(agent=cfg, backend=backend, backend_options=dict(backend_options or {}), **options)
    prepared = prepare_run(plan, opts, repo=repo, workers=workers, strategy=strategy, given=set(options),
                           observer=observer)
    return prepared.run()
