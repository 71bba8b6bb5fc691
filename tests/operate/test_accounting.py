"""Accounting and leftovers across resumes (issue 21, item 14): every paid attempt is counted by ``status``,
``report`` and the budget; every resumable end prints its ``distpar resume`` line; ``clean`` after a run that
ended ok removes the saved refs a later success superseded. Real CLI, real git, the fake agent ($0.01 a call)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from distpar.coordinator.journal import Journal
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, wait_for


def _journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def _only_run() -> str:
    j = _journal()
    try:
        (run,) = j.runs()
        return str(run["id"])
    finally:
        j.close()


def test_five_paid_attempts_across_a_resume_cost_five_cents_everywhere(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    fixed = tmp_path / "fixed"
    batches = [fake_batch(k, writes={f"f{k}.txt": str(k)}) for k in range(1, 5)]
    batches[3] = fake_batch(4, writes={"f4.txt": "4"}, extra=[f"@fake sh 'test -e {fixed}'"])
    plan = write_plan(repo.parent / "p.md", batches)
    env = {"FAKE_AGENT_LOG": str(log)}
    first = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--budget-usd", "1", cwd=repo, env=env)
    assert first.returncode == 1, first.stderr
    run_id = _only_run()
    assert first.stdout.splitlines()[-1] == f"fix what failed (above), then: distpar resume {run_id}"

    fixed.touch()
    res = run_distpar("resume", run_id, cwd=repo, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(log.read_text().splitlines()) == 5  # five paid invocations of $0.01
    assert "cost $0.0500" in res.stdout, res.stdout
    assert "budget $1.0000: spent $0.0500, left $0.9500" in res.stdout
    assert "distpar resume" not in res.stdout  # it landed: nothing to go on with

    status = run_distpar("status", run_id, cwd=repo)
    assert "cost $0.0500" in status.stdout, status.stdout
    assert re.search(r"\s4\s+ok\s.*\$0\.0200\s+1\s*$", status.stdout, re.M), status.stdout  # both attempts of 4
    listing = run_distpar("status", cwd=repo)
    assert "$0.0500" in listing.stdout, listing.stdout
    as_json = json.loads(run_distpar("status", "--json", cwd=repo).stdout)
    assert round(as_json[0]["cost_usd"], 6) == 0.05

    page = tmp_path / "r.html"
    assert run_distpar("report", run_id, "--html", str(page), cwd=repo).returncode == 0
    assert '<div class="k">cost</div><div class="v">$0.0500</div>' in page.read_text()


def test_an_interrupted_run_prints_its_resume_line(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, extra=["@fake write notes.txt x", "@fake sleep 30"])])
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--workers", "1", "--agent", "fake"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    home = Path(os.environ["DISTPAR_HOME"])
    try:
        wait_for(lambda: list(home.glob("worktrees/*/*/w1/notes.txt")), 30, "the agent to start")
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 130, errs
    assert out.splitlines()[-1] == f"interrupted; to go on where it stopped: distpar resume {_only_run()}", out


def test_clean_after_a_success_removes_the_saved_refs_it_superseded(repo: Path, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"a.txt": "1"}),
        fake_batch(2, writes={"b.txt": "half"}, extra=[f"@fake sh 'test -e {fixed}'"]),
    ])
    assert run_distpar("run", str(plan), "--agent", "fake", cwd=repo).returncode == 1
    run_id = _only_run()
    saved = f"refs/distpar/{run_id}/saved/2"
    assert sh_git(repo, "for-each-ref", "--format=%(refname)", "refs/distpar/").splitlines() == [saved]
    fixed.touch()
    assert run_distpar("resume", run_id, cwd=repo).returncode == 0
    oid = sh_git(repo, "rev-parse", saved)  # the failed attempt's work is still there after the success

    dry = run_distpar("clean", "--dry-run", cwd=repo)
    assert dry.returncode == 0, dry.stderr
    line = next(x for x in dry.stdout.splitlines() if saved in x)
    assert "superseded" in line and "unfinished" not in line and oid[:12] in line, dry.stdout
    res = run_distpar("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "for-each-ref", "refs/distpar/") == ""


def test_the_budget_counts_what_was_spent_before_a_resume(repo: Path, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    need = f"@fake sh 'test -e {fixed}'"
    plan = write_plan(repo.parent / "p.md", [fake_batch(k, writes={f"f{k}.txt": str(k)}, extra=[need])
                                             for k in (1, 2, 3)] + [fake_batch(4, writes={"f4.txt": "4"})])
    args = ("--workers", "1", "--agent", "fake", "--budget-usd", "0.055")
    assert run_distpar("run", str(plan), *args, cwd=repo).returncode == 1  # 1-3 fail, 4 ok: $0.04 spent
    run_id = _only_run()
    fixed.touch()
    res = run_distpar("resume", run_id, cwd=repo)
    # $0.04 before; 1 and 2 again: $0.06, over the $0.055: 3 never starts.
    assert res.returncode == 1, res.stdout + res.stderr
    assert "budget $0.0550: spent $0.0600, left $0.0000; spent before 1 unit(s) could start" in res.stdout
    assert "not started: 3" in res.stdout
