"""Item 4, the worker's part: git refusing distpar's commit (a signing program that fails, a required filter
that fails, a ref name git refuses) fails that batch once, with a clear message and its work saved: no
retry, no other batch blamed, no traceback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from distpar.core import names
from distpar.core.model import AgentConfig, Source, UnitSpec, UnitStatus, WorkerSettings
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from distpar.worker.unit import run_unit
from tests.conftest import run_distpar, run_id_of
from tests.safety.conftest import agent_calls, event_kinds, journal


def run_two_workers(repo: Path, log: Path) -> tuple[str, str, str]:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"one.dat": "payload one"}),
        fake_batch(2, writes={"two.dat": "payload two"}),
        fake_batch(3, writes={"three.dat": "payload three"}, depends_on=[1]),
    ])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--strategy", "round-robin",
                      cwd=repo, env={"FAKE_AGENT_LOG": str(log)})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr and "unexpected" not in res.stderr
    assert len(agent_calls(log)) == 2  # batches 1 and 2 ran once each; 3 (after 1) never ran
    return run_id_of(res.stdout), res.stdout, res.stderr


def test_failing_commit_signing(repo: Path, tmp_path: Path) -> None:
    sh_git(repo, "config", "commit.gpgsign", "true")
    sh_git(repo, "config", "gpg.program", "false")
    rid, out, _ = run_two_workers(repo, tmp_path / "calls.jsonl")
    assert "batch 1 (w1) failed: git could not sign the commit (commit.gpgsign is set and signing failed" in out
    assert f"the unit's work is saved on refs/distpar/{rid}/saved/1" in out
    j = journal()
    states = {b["unit_id"]: (b["state"], b["result_class"], b["attempt"]) for b in j.units(rid)}
    j.close()
    # Each batch that ran failed for itself, once; the one that never ran is skipped, not blamed.
    assert states == {"1": ("failed", "git_error", 1), "2": ("failed", "git_error", 1), "3": ("skipped", None, 1)}
    assert sh_git(repo, "show", f"refs/distpar/{rid}/saved/1:one.dat") == "payload one"
    assert sh_git(repo, "show", f"refs/distpar/{rid}/saved/2:two.dat") == "payload two"
    kinds = event_kinds(rid)
    assert "unit_retry" not in kinds and "unit_error" not in kinds


def test_failing_required_filter(repo: Path, tmp_path: Path) -> None:
    (repo / ".gitattributes").write_text("*.dat filter=broken\n")
    sh_git(repo, "add", ".gitattributes")
    sh_git(repo, "commit", "--quiet", "-m", "attributes")
    sh_git(repo, "config", "filter.broken.clean", "false")
    sh_git(repo, "config", "filter.broken.required", "true")
    rid, out, _ = run_two_workers(repo, tmp_path / "calls.jsonl")
    assert "batch 1 (w1) failed: the repository's required git filter 'broken' failed" in out
    # The work is saved unfiltered (the filter cannot run): nothing is lost.
    assert sh_git(repo, "show", f"refs/distpar/{rid}/saved/1:one.dat") == "payload one"
    assert "unit_retry" not in event_kinds(rid)


@pytest.mark.parametrize("batch_id", ["x.lock", "a..b"])
def test_batch_id_git_refuses_in_a_ref_name(repo: Path, tmp_path: Path, batch_id: str) -> None:
    """A failed batch's work goes on refs/distpar/<run>/saved/<key>: ``names.key`` makes any id one git takes
    (the plan refuses ids that cannot be keys up front; the worker must still never lose work over one)."""
    ws = tmp_path / "ws"
    base = gitops.rev(repo, "main")
    prompt = '@fake write work.txt "unfinished"\n@fake fail 3 boom'
    settings = WorkerSettings("run1", str(ws), str(tmp_path / "logs"))
    spec = UnitSpec(batch_id, "b", prompt, AgentConfig(preset="fake"), 60.0, worker=0, dispatch=0,
                    branch="distpar/run1/b/1", base=base, source=Source("worktree", str(repo)))
    result = run_unit(settings, spec, threading.Event())
    r = result.result
    assert r.status is UnitStatus.FAILED and r.tries == 1
    assert result.saved_ref and result.saved_ref.startswith(f"refs/distpar/run1/saved/{names.key(batch_id)}")
    assert batch_id not in result.saved_ref
    assert result.bundle == str(ws)  # a repository of its own: the coordinator fetches the saved ref from it
    assert sh_git(ws, "show", f"{result.saved_ref}:work.txt") == "unfinished"
    assert result.head == base
    gitops.workspace_remove(repo, ws)


def test_work_found_between_two_units_is_saved_and_said_by_the_later_unit(repo: Path, tmp_path: Path) -> None:
    """Something an earlier unit left running (outside distpar's reach) wrote into the workspace after that unit
    was committed: the next unit of the worker saves it on a branch before moving the workspace, says so in its
    notes, and does not carry it into its own commit."""
    ws = tmp_path / "ws"
    base = gitops.rev(repo, "main")
    settings = WorkerSettings("run1", str(ws), str(tmp_path / "logs"))

    def spec(n: int) -> UnitSpec:
        return UnitSpec(f"u{n}", "b", f'@fake write u{n}.txt "unit {n}"', AgentConfig(preset="fake"), 60.0, worker=0,
                        dispatch=n, branch=f"distpar/run1/b/u{n}", base=base, source=Source("worktree", str(repo)))

    first = run_unit(settings, spec(1), threading.Event())
    assert first.result.status is UnitStatus.OK and not first.result.notes
    (ws / "late.txt").write_text("written after unit 1 was committed\n")
    (ws / "README.md").write_text("changed late too\n")
    second = run_unit(settings, spec(2), threading.Event())
    assert second.result.status is UnitStatus.OK
    (note,) = [n for n in second.result.notes if "uncommitted work was found" in n]
    branch = note.split("saved on branch ", 1)[1].split(" ", 1)[0]
    assert branch.startswith("distpar-kept/run1-w1-")
    assert sh_git(ws, "show", f"{branch}:late.txt") == "written after unit 1 was committed"
    assert sh_git(ws, "show", f"{branch}:README.md") == "changed late too"
    assert sh_git(ws, "ls-tree", "--name-only", "HEAD").split() == sorted(
        [*sh_git(repo, "ls-tree", "--name-only", base).split(), "u2.txt"])  # neither late file, nor unit 1's
    assert second.workspace is None  # not the worker's first unit: no workspace_ready
    gitops.workspace_remove(repo, ws)
