"""Run-wide and per-batch limits: the budget, the cap on concurrent agents, staggered starts, warnings for
limits an agent cannot apply, and `distpar agents`."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.core.model import UnitResult, UnitStatus
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


def costly(n: int, cost: float = 0.25) -> list[dict[str, object]]:
    return [fake_batch(i, writes={f"f{i}.txt": "x"}, extra=[f"@fake cost {cost}"]) for i in range(1, n + 1)]


def test_budget_stops_new_batches(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    report, runner = run_plan(repo, costly(4), workers=1, budget_usd=0.5)
    assert [r.unit_id for r in report.results] == ["1", "2"]
    assert all(r.status is UnitStatus.OK for r in report.results)
    assert report.pending == ["3", "4"]
    assert (report.state, report.exit_code) == ("failed", ExitCode.BATCH_FAILED)
    assert report.summary()["budget"] == {"limit": 0.5, "spent": 0.5, "left": 0.0, "exhausted": True}
    assert gitops.rev(repo, "main") == start  # nothing lands from an unfinished run; the branch is kept
    assert runner.branch("2") in report.branches and "f2.txt" in sh_git(repo, "ls-tree", "-r", runner.branch("2"))
    j = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    assert [b["state"] for b in j.units(report.run_id)] == ["ok", "ok", "pending", "pending"]
    ev = [e for e in j.events(report.run_id) if e.kind == "budget_exhausted"]
    assert len(ev) == 1 and ev[0].data["not_started"] == ["3", "4"] and ev[0].data["spent"] == 0.5


def test_budget_not_reached_changes_nothing(repo: Path) -> None:
    report, _ = run_plan(repo, costly(3, 0.1), workers=2, budget_usd=1.0)
    assert report.exit_code == ExitCode.OK
    assert report.summary()["budget"] == {"limit": 1.0, "spent": 0.3, "left": 0.7, "exhausted": False}


def test_cli_budget_reports_spent_and_left(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", costly(3))
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "1", "--budget-usd", "0.5", cwd=repo)
    assert res.returncode == 1, res.stderr
    assert "budget $0.5000: spent $0.5000, left $0.0000; spent before 1 unit(s) could start" in res.stdout
    assert "not started: 3" in res.stdout


def starts(results: list[UnitResult]) -> list[float]:
    """When distpar started each agent process."""
    return sorted(r.started for r in results if r.started)


def test_max_concurrent_agents_caps_running_agents(repo: Path) -> None:
    batches = [fake_batch(i, writes={f"c{i}.txt": "x"}, sleep=0.4) for i in range(1, 4)]
    report, _ = run_plan(repo, batches, workers=3, max_concurrent_agents=1, stagger=0.0)
    assert report.exit_code == ExitCode.OK
    t = starts(report.results)
    assert all(b - a >= 0.4 for a, b in itertools.pairwise(t)), t  # one agent at a time: each waited for the last


def test_agent_starts_are_staggered(repo: Path) -> None:
    batches = [fake_batch(i, writes={f"g{i}.txt": "x"}, sleep=1) for i in range(1, 4)]
    report, _ = run_plan(repo, batches, workers=3, stagger=0.3)
    assert report.exit_code == ExitCode.OK
    t = starts(report.results)
    assert all(0.29 <= b - a < 0.9 for a, b in itertools.pairwise(t)), t  # spaced out, yet running side by side


def test_limits_an_agent_cannot_apply_are_warned_about(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"w.txt": "w"})])
    res = run_distpar("run", str(plan), "--agent", "codex", "--max-turns", "3", "--budget-usd", "2", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "warning: the codex agent has no --max-turns: 3 is not applied" in res.stderr
    assert "warning: --budget-usd: the codex agent reports no cost" in res.stderr
    logs = list(Path(os.environ["DISTPAR_HOME"]).glob("runs/*/logs/1.log"))
    assert logs and "--- distpar: warning: the codex agent has no --max-turns" in logs[0].read_text()


def test_agents_command_lists_presets_versions_and_keys(repo: Path) -> None:
    hang = f"{sys.executable} -c 'import time; time.sleep(30)'"
    env = {"DISTPAR_AGENT_GEMINI_BIN": hang, "DISTPAR_AGENT_AIDER_BIN": "/nonexistent/aider",
           "CODEX_API_KEY": "sk-codex-not-printed"}
    t0 = time.time()
    res = run_distpar("agents", "--json", "--timeout", "1", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    assert time.time() - t0 < 20
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"claude", "codex", "gemini", "aider", "fake"}
    assert rows["codex"]["version"] == "codex-cli 0.58.0 [distpar fake agent]"
    assert rows["codex"]["key_vars"] == ["CODEX_API_KEY", "OPENAI_API_KEY"]
    assert rows["codex"]["keys_set"] == ["CODEX_API_KEY"]
    assert rows["gemini"]["version"] is None and "did not answer within 1s" in rows["gemini"]["error"]
    assert rows["aider"]["path"] is None and rows["aider"]["error"] == "/nonexistent/aider not found on PATH"
    assert rows["claude"]["version"].startswith("2.1.0 (Claude Code)")
    assert "sk-codex-not-printed" not in res.stdout
    table = run_distpar("agents", cwd=repo, env=env | {"DISTPAR_AGENT_GEMINI_BIN": "/nonexistent/gemini"})
    assert table.returncode == 0
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("codex"))
    assert "yes" in line and "CODEX_API_KEY (set)" in line and "OPENAI_API_KEY," in line + ","
