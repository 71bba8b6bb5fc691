"""Every preset runs a 4-batch plan end to end through ``distpar run`` (the CLI in a subprocess) with its real CLI
against the stand-in model server: files written, committed, merged; cost or tokens journaled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.testing.builders import fake_batch, sh_git, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.realagents.conftest import Agent
from tests.realagents.standins import TOKENS_IN, TOKENS_OUT, StandIn

pytestmark = pytest.mark.realagents

# What each CLI reports of its own accord: claude and aider compute a cost from their price tables.
REPORTS_COST = {"claude": True, "codex": False, "gemini": False, "aider": True}


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def test_four_batch_plan_end_to_end(repo: Path, agent: Agent, standin: StandIn) -> None:
    batches = [fake_batch(1, writes={"src/one.py": "ONE = 1\n"}),
               fake_batch(2, writes={"src/two.py": "TWO = 2\n"}),
               fake_batch(3, writes={"docs/three.md": "three\n"}, depends_on=[1]),
               fake_batch(4, writes={"src/four.py": "FOUR = 4\n"}, depends_on=[2])]
    plan = write_plan(repo.parent / "plan.md", batches)
    out = run_distpar("run", str(plan), "--workers", "2", *agent.run_args(), "--agent-retries", "0",
                      "--timeout", "180", cwd=repo, timeout=600)
    assert out.returncode == ExitCode.OK, out.stdout + out.stderr
    files = tree_files(repo, "main")
    assert {"src/one.py", "src/two.py", "docs/three.md", "src/four.py"} <= set(files)
    assert sh_git(repo, "show", "main:src/two.py") == "TWO = 2"
    log = sh_git(repo, "log", "--format=%s", "main")
    for i in (1, 2, 3, 4):
        assert f"batch {i}" in log, log
    run_id = run_id_of(out.stdout)
    rows = journal().units(run_id)
    assert [r["result_class"] for r in rows] == ["success"] * 4
    for r in rows:
        assert r["input_tokens"] and r["input_tokens"] >= TOKENS_IN and r["output_tokens"] >= TOKENS_OUT, r
        if REPORTS_COST[agent.name]:
            assert r["cost_usd"] and r["cost_usd"] > 0, r
    if agent.name == "gemini":  # the main model, not the router's (a generateContent call before it)
        main = {r["model"] for r in standin.requests if r["path"].endswith(":streamGenerateContent")}
        router = {r["model"] for r in standin.requests if r["path"].endswith(":generateContent")}
        assert router and {r["model"] for r in rows} <= main - router, (main, router)
    summary = json.loads(journal().run(run_id)["summary"])
    assert summary["tokens"]["input"] == sum(r["input_tokens"] for r in rows)
    # every batch reached the model through the CLI, with the prompt it was given
    prompts = " ".join(r["prompt"] for r in standin.requests)
    for name in ("src/one.py", "src/two.py", "docs/three.md", "src/four.py"):
        assert name in prompts
