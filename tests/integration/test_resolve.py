"""--on-conflict resolve with real git and the fake agent: a gated, marker-free resolution lands; one that leaves
markers or fails a gate does not, and says why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, make_repo, sh_git, write_plan
from tests.conftest import run_distpar, wait_for
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")

BOTH = "grep -q 'entry a' registry.txt && grep -q 'entry b' registry.txt && ! grep -q '^<<<<<<<' registry.txt"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# demo\n", "registry.txt": "# entries\n"})


def two() -> list[dict[str, object]]:
    return [fake_batch("a", extra=["@fake append registry.txt 'entry a'"]),
            fake_batch("b", extra=["@fake append registry.txt 'entry b'"])]


def test_resolve_lands_a_marker_free_gated_merge(registry: Path) -> None:
    report, _ = run_plan(registry, two(), workers=2, on_conflict="resolve", verify_merged=BOTH)
    assert report.exit_code == ExitCode.OK, report.summary()
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b"]
    (r,) = report.resolutions
    assert r["ok"] and r["units"] == ["a", "b"] and r["files"] == ["registry.txt"]
    assert "+entry b" in r["diff"] or "entry b" in r["diff"]
    trailers = sh_git(registry, "log", "-1", "--format=%(trailers)", r["commit"])
    assert "Distpar-Resolved-Units: a, b" in trailers and "Distpar-Resolver: fake" in trailers
    assert gitops.is_ancestor(registry, r["commit"], "main")  # the resolution is that merge's commit
    assert gitops.rev(registry, r["ref"]) == r["commit"]  # and kept on a ref
    assert not report.warnings and not gitops.dirty_files(registry)
    assert r["cost_usd"] == pytest.approx(0.01) and report.spent == pytest.approx(0.03)  # two units, one resolution


def test_resolve_without_a_gate_warns(registry: Path) -> None:
    report, _ = run_plan(registry, two(), workers=2, on_conflict="resolve")
    assert report.exit_code == ExitCode.OK
    assert any("nothing checks the agent's resolutions" in w for w in report.warnings)


def test_a_resolution_that_leaves_markers_does_not_land(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_RESOLVE", "markers")
    start = gitops.rev(registry, "main")
    report, _ = run_plan(registry, two(), workers=2, on_conflict="resolve", verify_merged=BOTH)
    assert report.exit_code == ExitCode.CONFLICT and gitops.rev(registry, "main") == start
    (r,) = report.resolutions
    assert not r["ok"] and r["why"] == "conflict markers left in registry.txt" and r["commit"] is None
    assert report.conflict is not None and "# conflict markers left in registry.txt" in report.conflict.commands[0]


def test_a_resolution_that_fails_verify_does_not_land(registry: Path) -> None:
    start = gitops.rev(registry, "main")
    one_entry = "test $(grep -c entry registry.txt) -le 1"  # each unit passes it; both entries together do not
    report, _ = run_plan(registry, two(), workers=2, on_conflict="resolve", verify=one_entry)
    # the conflict stands (exit 3, the more severe), the failed check is shown with it
    assert gitops.rev(registry, "main") == start and report.exit_code == ExitCode.CONFLICT
    assert report.gate is not None and report.gate["name"] == "verify (on the resolution)"
    assert report.gate["exit_code"] == 1
    (r,) = report.resolutions
    assert not r["ok"] and r["why"].startswith("--verify failed on the resolution")
    assert gitops.rev(registry, r["ref"]) == r["commit"]  # kept for a look


def test_a_resolution_that_fails_verify_merged_does_not_land(registry: Path) -> None:
    start = gitops.rev(registry, "main")
    report, _ = run_plan(registry, two(), workers=2, on_conflict="resolve",
                         verify_merged="! grep -q 'entry b' registry.txt")
    assert report.exit_code == ExitCode.GATE_FAILED and gitops.rev(registry, "main") == start
    assert report.resolutions[0]["ok"]


def test_interrupt_and_resume_in_the_middle_of_a_resolution(registry: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.md", two())
    start = gitops.rev(registry, "main")
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--workers", "2", "--agent", "fake",
                             "--on-conflict", "resolve", "--verify-merged", BOTH], cwd=registry,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "FAKE_AGENT_RESOLVE_SLEEP": "30"})
    try:
        run_id = wait_for(lambda: next((r["id"] for r in journal().runs()), ""), what="the run")
        wait_for(lambda: any(e.kind == "resolve_started" for e in journal().events(run_id)), timeout=60,
                 what="the resolution to start")
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
        assert time.time() - t0 < 20  # the resolving agent was stopped, not waited for
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert gitops.rev(registry, "main") == start and not gitops.dirty_files(registry)
    assert any(e.kind == "resolve_interrupted" for e in journal().events(run_id))
    res = run_distpar("resume", run_id, cwd=registry, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b"]
    assert "resolved by the agent" in res.stdout


def test_six_units_on_one_file_resolved_one_merge_after_another(registry: Path) -> None:
    ids = [f"u{i}" for i in range(1, 7)]
    batches = [fake_batch(u, extra=[f"@fake append registry.txt 'entry {u}'"]) for u in ids]
    report, _ = run_plan(registry, batches, workers=3, on_conflict="resolve",
                         verify_merged="! grep -q '^<<<<<<<' registry.txt")
    assert report.exit_code == ExitCode.OK, report.summary()
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", *(f"entry {u}" for u in ids)]
    assert len(report.resolutions) == 5 and all(r["ok"] for r in report.resolutions)


def test_the_report_shows_each_resolution_and_rerun(registry: Path, tmp_path: Path) -> None:
    report, _ = run_plan(registry, two(), workers=2, on_conflict="resolve", verify_merged=BOTH)
    out = tmp_path / "r.html"
    res = run_distpar("report", report.run_id, "--html", str(out), cwd=registry)
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert "conflict of a, b</b> in registry.txt: resolved by the agent" in page and "+ entry b" in page
    rerun, _ = run_plan(registry, two(), workers=2, on_conflict="rerun")
    assert run_distpar("report", rerun.run_id, "--html", str(out), cwd=registry).returncode == 0
    assert "<b>rerun</b> of batch b (the merge queue, 1): conflicts in registry.txt with a" in out.read_text()
