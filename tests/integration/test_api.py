"""The Python API: ``distpar.run(plan, agent=MyPreset)`` from the user's own code."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

import distpar
from distpar import agents
from distpar.agents import Preset
from distpar.core.errors import ExitCode, PlanError
from distpar.core.model import AgentConfig, AgentOutcome
from distpar.testing.builders import fake_batch, tree_files, write_plan

pytestmark = pytest.mark.integration


def my_args(cfg: AgentConfig, ctx: agents.Context) -> list[str]:
    return ["-m", "distpar.testing.fake_agent", "-p", "--output-format", "json", "--", ctx.prompt]


def my_parse(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    return replace(agents.parse_claude(stdout, stderr, exit_code), message="read by my own preset")


def my_preset() -> Preset:
    """A preset of the user's own, defined here (not installed, not importable by a worker)."""
    return Preset("mine", sys.executable, "my agent", my_args, my_parse, command=(sys.executable,))


def test_run_a_plan_from_python_with_a_preset_of_my_own(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"}),
                                             fake_batch(2, writes={"b.txt": "b"})])
    events: list[str] = []
    report = distpar.run(plan, repo=repo, workers=2, agent=my_preset(), observer=lambda k, d: events.append(k))
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    assert {"a.txt", "b.txt"} <= set(tree_files(repo, "main"))
    assert all(r.outcome and r.outcome.message == "read by my own preset" for r in report.results)
    assert events[0] == "run_started" and events[-1] == "run_ended"


def test_bad_input_raises_before_anything_runs(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text("```json dispatch\n{\"batches\": []}\n```\n")
    with pytest.raises(PlanError):
        distpar.run(bad, repo=repo, agent="fake")
