"""Preset behaviour that only the real CLIs can confirm: prompts of any size, claude's --agent and lost
sessions, `distpar agents` version lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from distpar import agents
from distpar.core.errors import ExitCode
from distpar.core.model import AgentConfig
from distpar.infra.process import run_process
from distpar.testing.builders import fake_batch, tree_files, write_plan
from tests.conftest import run_distpar
from tests.realagents.conftest import Agent
from tests.realagents.standins import StandIn

pytestmark = pytest.mark.realagents


def test_a_prompt_over_128k_reaches_every_cli(repo: Path, agent: Agent, standin: StandIn) -> None:
    filler = "\n".join(f"context line {i}: " + "lorem ipsum " * 8 for i in range(1400))  # ~150 kB
    assert len(filler.encode()) > 131072
    batch = fake_batch(1, writes={"big.txt": "big"}, extra=[filler])
    plan = write_plan(repo.parent / "plan.md", [batch])
    out = run_distpar("run", str(plan), *agent.run_args(), "--agent-retries", "0", "--timeout", "300", cwd=repo,
                      timeout=400)
    assert out.returncode == ExitCode.OK, out.stdout[-3000:] + out.stderr[-3000:]
    assert "big.txt" in tree_files(repo, "main")
    assert max(r["prompt_chars"] for r in standin.requests) >= len(filler)


def _claude(agent: Agent, ctx: agents.Context, tmp: Path, name: str = "claude") -> tuple[str, str, int | None]:
    inv = agents.invocation(AgentConfig("claude"), ctx, os.environ, {})
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    proc = run_process(inv.argv, cwd=ctx.workdir, env=inv.env, stdout_path=out, stderr_path=err, timeout=120)
    return out.read_text(), err.read_text(), proc.exit_code


@pytest.fixture
def claude(wired: Callable[[str], Agent]) -> Agent:
    return wired("claude")


def test_claude_agent_flag_selects_a_defined_agent(repo: Path, claude: Agent, standin: StandIn,
                                                   tmp_path: Path) -> None:
    (repo / ".claude" / "agents").mkdir(parents=True)
    (repo / ".claude" / "agents" / "reviewer.md").write_text(
        "---\nname: reviewer\ndescription: reviews code\n---\nYou are the REVIEWER-AGENT-7731. Review carefully.\n")
    ctx = agents.Context("@fake write r.txt reviewed", tmp_path / "p.md", "b", repo, "r", 0, subagent_type="reviewer")
    stdout, stderr, code = _claude(claude, ctx, tmp_path)
    assert agents.parse_claude(stdout, stderr, code).ok, stderr
    assert (repo / "r.txt").read_text() == "reviewed"
    assert any("REVIEWER-AGENT-7731" in r["system"] for r in standin.requests)


def test_claude_resume_of_an_unsaved_session_falls_back_to_a_fresh_one(repo: Path, claude: Agent,
                                                                      tmp_path: Path) -> None:
    ctx = agents.Context("@fake write s.txt again", tmp_path / "p.md", "b", repo, "r", 0, resume=True)
    outcome = agents.parse_claude(*_claude(claude, ctx, tmp_path))
    assert outcome.session_missing and not outcome.transient, outcome
    fresh = ctx.fresh_session()
    outcome = agents.parse_claude(*_claude(claude, fresh, tmp_path, "fresh"))
    assert outcome.ok and (repo / "s.txt").read_text() == "again"


def test_distpar_agents_shows_each_real_version(repo: Path, agent: Agent) -> None:
    out = run_distpar("agents", "--json", "--timeout", "60", cwd=repo, timeout=300)
    assert out.returncode == 0, out.stderr
    probe = {p["name"]: p for p in json.loads(out.stdout)}[agent.name]
    assert probe["version"] and re.search(r"\d+\.\d+", probe["version"]), probe
    assert not probe["version"].lower().startswith(("warn", "error")), probe
    direct = subprocess.run([str(agent.path), "--version"], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL).stdout
    assert probe["version"] in direct
