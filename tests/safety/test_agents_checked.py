"""Item 10: every agent executable the plan uses is checked before any batch starts (exit 2, naming what is
missing and who needs it; nothing changed)."""

from __future__ import annotations

import shutil
from pathlib import Path

from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar


def path_with_git_only(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    return str(bin_dir)


def test_missing_default_agent_is_refused_before_anything_runs(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "p.md", [fake_batch(1), fake_batch(2, agent="codex"), fake_batch(3, agent="fake")])
    before = sh_git(repo, "for-each-ref")
    res = run_distpar("run", str(plan), "--agent", "claude", cwd=repo, env={"PATH": path_with_git_only(tmp_path)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines()[0] == ("Error: agent executable not found on PATH: claude (needed by the run's "
                                          "agent (--agent)); codex (needed by batch 2)")
    assert res.stderr.splitlines()[1].startswith("Hint: install it, put it on PATH")
    assert sh_git(repo, "for-each-ref") == before
    assert not (Path.home() / "distpar-home" / "journal.db").exists()  # no run was journaled


def test_a_template_agent_and_an_override_are_checked_too(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "p.md", [fake_batch(1, agent="no-such-tool --go {prompt}")])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo,
                      env={"DISTPAR_AGENT_FAKE_BIN": "/nonexistent/fake-agent"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines()[0] == ("Error: agent executable not found on PATH: /nonexistent/fake-agent "
                                          "(needed by the run's agent (--agent)); no-such-tool (needed by batch 1)")


def test_agents_that_are_there_pass(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "p.md", [fake_batch(1, agent="fake", writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo, env={"PATH": path_with_git_only(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "show", "main:a.txt") == "a"
