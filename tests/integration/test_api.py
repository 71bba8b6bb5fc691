"""The Python API: ``distpar.run(plan, agent=MyPreset)`` from the user's own code."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import distpar
from distpar import agents
from distpar.agents import Preset
from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode, PlanError, RepoError, UsageError
from distpar.core.model import AgentConfig, AgentOutcome
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, tree_files, write_plan

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


BAD_INPUTS = [
    ("plan", {}, PlanError, r"bad\.md:2: batches is empty: nothing to run"),
    ("agent", {"agent": "nosuchagent"}, UsageError, r"unknown agent 'nosuchagent'"),
    ("backend", {"backend": "nosuch"}, UsageError, r"unknown backend 'nosuch' \(installed: local, ray, ssh, fake"),
    ("into", {"into": "no-such-branch"}, RepoError, r"--into no-such-branch: no such branch"),
    ("workers", {"workers": 0}, UsageError, r"--workers: 0 is not an integer >= 1"),
    ("timeout", {"timeout": -1}, UsageError, r"--timeout: -1 is not > 0"),
    ("retries", {"retries": "2"}, UsageError, r"--retries: '2' is not an integer"),
    ("hooks", {"hooks": "yes"}, UsageError, r"--hooks: 'yes' is not true or false"),
]


@pytest.mark.parametrize(("what", "kw", "error", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_before_anything_runs(repo: Path, tmp_path: Path, what: str, kw: dict[str, Any],
                                               error: type[Exception], message: str) -> None:
    """Each bad input raises its own clear error, and nothing ran: no run journaled or started, no branch, no
    worktree, the checkout untouched."""
    if what == "plan":
        plan = tmp_path / "bad.md"
        plan.write_text("```json dispatch\n{\"batches\": []}\n```\n")
    else:
        plan = write_plan(tmp_path / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    refs = sh_git(repo, "for-each-ref")
    with pytest.raises(error, match=message):
        distpar.run(plan, repo=repo, **{"agent": "fake", **kw})
    home = Path(os.environ["DISTPAR_HOME"])
    assert not (home / "journal.db").exists() or Journal(home / "journal.db").runs() == []
    assert not (home / "runs").exists() and not (home / "worktrees").exists()
    assert sh_git(repo, "for-each-ref") == refs and len(gitops.worktrees(repo)) == 1
    assert sh_git(repo, "status", "--porcelain") == "" and not (repo / "a.txt").exists()


# The API keeps every guarantee the CLI gives: both build a run with prepare_run.

def test_api_honours_the_repository_settings(repo: Path) -> None:
    """[tool.distpar] applies through the API as through the CLI (here a merged gate that fails: nothing lands)."""
    (repo / "distpar.toml").write_text('verify_merged = "exit 3"\n')
    sh_git(repo, "add", "distpar.toml")
    sh_git(repo, "commit", "-qm", "settings")
    before = sh_git(repo, "rev-parse", "main")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    report = distpar.run(plan, repo=repo, workers=1, agent="fake")
    assert report.exit_code == ExitCode.GATE_FAILED and report.gate and report.gate["exit_code"] == 3
    assert sh_git(repo, "rev-parse", "main") == before
    # A keyword argument wins over the setting, as a flag does.
    report = distpar.run(plan, repo=repo, workers=1, agent="fake", verify_merged="true")
    assert report.exit_code == ExitCode.OK and "a.txt" in tree_files(repo, "main")


def test_api_refuses_a_push_remote_that_does_not_exist(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    with pytest.raises(UsageError, match="--push nowhere: no such remote"):
        distpar.run(plan, repo=repo, agent="fake", push="nowhere")
    assert "a.txt" not in tree_files(repo, "main") and not list_runs(repo)


def test_api_refuses_repo_url_with_the_local_backend(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    with pytest.raises(UsageError, match="--repo-url goes with a remote backend"):
        distpar.run(plan, repo=repo, agent="fake", repo_url="file:///nowhere")
    assert not list_runs(repo)


def test_api_reports_the_warnings_the_cli_prints(repo: Path) -> None:
    """A run budget that a template agent cannot count: the CLI prints the warning, the API returns it."""
    template = f"{sys.executable} -m distpar.testing.fake_agent -p {{prompt}}"
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    report = distpar.run(plan, repo=repo, workers=1, agent=template, budget_usd=5.0)
    assert report.exit_code == ExitCode.OK
    assert report.warnings == ["--budget-usd: the template agent reports no cost, so its batches do not count "
                               "against it"]
    assert report.summary()["warnings"] == report.warnings
    cli = subprocess.run([sys.executable, "-m", "distpar", "run", str(plan), "--repo", str(repo), "--workers", "1",
                          "--agent-cmd", template, "--budget-usd", "5", "-q"], capture_output=True, text=True)
    assert cli.returncode == 0 and f"warning: {report.warnings[0]}" in cli.stderr


def list_runs(repo: Path) -> list[dict]:
    from distpar.coordinator.runtime import open_journal

    journal = open_journal(repo)
    try:
        return journal.runs()
    finally:
        journal.close()
