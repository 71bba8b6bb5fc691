"""The real Claude Code CLI resolves a final-merge conflict (``--on-conflict resolve``) through the stand-in,
which answers distpar's resolve prompt by reading and writing the merged file with Claude's own tools."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from distpar.core.errors import ExitCode
from distpar.testing.builders import fake_batch, make_repo, sh_git, write_plan
from tests.conftest import run_distpar
from tests.realagents.conftest import Agent
from tests.realagents.standins import StandIn, resolutions

pytestmark = pytest.mark.realagents


def test_the_stand_in_reads_the_resolve_prompt() -> None:
    text = ("distpar: resolve a merge conflict.\n| --- a/x\nThe files as they are now, with the conflict markers:\n"
            "--- reg.txt\n| # e\n| <<<<<<< HEAD\n| a\n| =======\n| b\n| >>>>>>> t\n")
    assert resolutions(text) == [("reg.txt", "# e\na\nb\n")]
    assert resolutions("@fake write x y") == []


def test_claude_resolves_a_conflict_through_the_stand_in(tmp_path: Path, wired: Callable[[str], Agent],
                                                         standin: StandIn) -> None:
    agent = wired("claude")
    repo = make_repo(tmp_path / "repo", {"README.md": "# demo\n", "registry.txt": "# entries\n"})
    batches = [fake_batch("a", writes={"registry.txt": "# entries\nentry a\n"}),
               fake_batch("b", writes={"registry.txt": "# entries\nentry b\n"})]
    plan = write_plan(tmp_path / "plan.md", batches)
    gate = "grep -q 'entry a' registry.txt && grep -q 'entry b' registry.txt && ! grep -q '<<<<<<<' registry.txt"
    out = run_distpar("run", str(plan), "--workers", "2", *agent.run_args(), "--agent-retries", "0",
                      "--timeout", "180", "--on-conflict", "resolve", "--verify-merged", gate, cwd=repo, timeout=600)
    assert out.returncode == ExitCode.OK, out.stdout + out.stderr
    assert sh_git(repo, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b"]
    assert "resolved by the agent" in out.stdout
    assert "Distpar-Resolver: claude" in sh_git(repo, "log", "--format=%B", "main")
    writes = [r for r in standin.requests if r.get("tool") == "Write"]
    assert writes and writes[0]["input"]["content"] == "# entries\nentry a\nentry b\n"
