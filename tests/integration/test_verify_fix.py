"""The fix loop: --on-verify-fail fix hands the failing check's output to the agent as a new unit on the
integration branch, then runs the gate again; the fix is a commit of its own, kept on a ref, shown in the report.
The check prints what the fake agent should do (an ``@fake`` line): the output reaches the agent's prompt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration

# Fails until fixed.txt exists, printing the line that makes the fake agent create it.
CHECK = "test -e fixed.txt || { echo 'missing fixed.txt; to fix:'; echo \"@fake write fixed.txt 'yes'\"; exit 1; }"
NEVER = "echo 'still broken, and nothing the agent can do'; exit 1"


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def test_the_fix_unit_commits_on_the_integration_and_the_gate_passes(repo: Path) -> None:
    p = write_plan(repo.parent / "p.md", [fake_batch("a", writes={"a.txt": "a\n"}),
                                          fake_batch("b", writes={"b.txt": "b\n"})])
    res = run_distpar("run", str(p), "--agent", "fake", "--workers", "2", "--verify-merged", CHECK,
                      "--on-verify-fail", "fix", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert "fix unit fix-1 (ok): committed" in res.stdout and f"distpar/{rid}/fix/1" in res.stdout
    assert {"a.txt", "b.txt", "fixed.txt"} <= set(sh_git(repo, "ls-tree", "--name-only", "main").split())
    # The fix is a commit of its own, on top of the merged units, kept on its branch.
    fix = gitops.rev(repo, f"distpar/{rid}/fix/1")
    assert sh_git(repo, "rev-parse", "main") == fix
    assert sh_git(repo, "diff", "--name-only", f"{fix}^", fix) == "fixed.txt"
    assert [e.data["ok"] for e in journal().events(rid) if e.kind == "verify_merged"] == [False, True]
    fixes = [e for e in journal().events(rid) if e.kind == "verify_fix"]
    assert len(fixes) == 1 and fixes[0].unit_id == "fix-1" and fixes[0].data["commit"] == fix
    status = run_distpar("status", rid, cwd=repo)
    assert f"fix unit fix-1: ok, committed {fix[:12]} on distpar/{rid}/fix/1" in status.stdout, status.stdout


def test_the_fix_loop_is_bounded_and_a_gate_still_failing_lands_nothing(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    report, _ = run_plan(repo, [fake_batch("a", writes={"a.txt": "a\n"})], verify_merged=NEVER,
                         on_verify_fail="fix", max_fixes=2)
    assert report.exit_code == ExitCode.GATE_FAILED
    assert [f["unit"] for f in report.fixes] == ["fix-1", "fix-2"]
    first, second = report.fixes
    if first["commit"]:  # the second try starts from the first's commit: fixes pile up on the integration
        assert second["base"] == first["commit"]
    assert gitops.rev(repo, "main") == start


def test_without_fix_the_default_stops_and_runs_no_agent_after_the_gate(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch("a", writes={"a.txt": "a\n"})], verify_merged=CHECK)
    assert report.exit_code == ExitCode.GATE_FAILED and report.fixes == []


def test_fix_without_a_check_is_refused(repo: Path) -> None:
    p = write_plan(repo.parent / "p.md", [fake_batch("a", writes={"a.txt": "a\n"})])
    res = run_distpar("run", str(p), "--agent", "fake", "--on-verify-fail", "fix", cwd=repo)
    assert res.returncode == ExitCode.USAGE and "--on-verify-fail fix needs --verify-merged" in res.stderr
    bad = run_distpar("run", str(p), "--agent", "fake", "--on-verify-fail", "maybe", "--verify-merged", "true",
                      cwd=repo)
    assert bad.returncode == ExitCode.USAGE and "not stop or fix" in bad.stderr


def test_a_fix_costs_toward_the_budget_and_none_starts_once_it_is_spent(repo: Path) -> None:
    # The fake agent reports $0.01 a run: the unit spends the whole budget, so no fix starts.
    report, _ = run_plan(repo, [fake_batch("a", writes={"a.txt": "a\n"})], verify_merged=CHECK,
                         on_verify_fail="fix", budget_usd=0.01)
    assert report.exit_code == ExitCode.GATE_FAILED
    assert [(f["unit"], f["status"]) for f in report.fixes] == [("fix-1", "skipped")]
    report, _ = run_plan(repo, [fake_batch("b", writes={"b.txt": "b\n"})], verify_merged=CHECK,
                         on_verify_fail="fix", budget_usd=1.0)
    assert report.exit_code == ExitCode.OK and report.fixes[0]["cost_usd"] is not None
    assert report.spent is not None and abs(report.spent - 0.02) < 1e-9  # the unit's and the fix's
