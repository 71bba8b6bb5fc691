"""Item 1: an agent that switches its worktree to another branch must not get distpar to write that branch,
or to merge it (with the user's unrelated work) into the target."""

from __future__ import annotations

import json
from pathlib import Path

from distpar.testing.builders import fake_batch, sh_git, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.safety.conftest import event_kinds, sh


def user_branch(repo: Path) -> str:
    """A branch ``other`` with the user's unrelated work in progress on it."""
    sh_git(repo, "switch", "--quiet", "-c", "other")
    (repo / "wip.txt").write_text("the user's half-done work\n")
    sh_git(repo, "add", "wip.txt")
    sh_git(repo, "commit", "--quiet", "-m", "wip")
    sh_git(repo, "switch", "--quiet", "main")
    return sh_git(repo, "rev-parse", "other")


def test_agent_that_checks_out_another_branch_and_edits(repo: Path) -> None:
    other = user_branch(repo)
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("git checkout -q other && echo agent > agent.txt")]),
        fake_batch(2, writes={"two.txt": "2"}),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    files = tree_files(repo, "main")
    assert "agent.txt" in files and "two.txt" in files  # the agent's edits are kept, on distpar's branch
    assert "wip.txt" not in files  # the user's branch was not merged into main
    assert sh_git(repo, "rev-parse", "other") == other  # ... nor written
    warning = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: batch 1:")]
    assert warning == ["warning: batch 1: the agent switched the worktree to branch other; distpar switched it "
                       f"back to distpar/{run_id_of(res.stdout)}/b/1 and kept the agent's edits"], res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_agent_that_commits_onto_another_branch(repo: Path) -> None:
    other = user_branch(repo)
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("git checkout -q other && echo agent > agent.txt && git add agent.txt "
                                "&& git commit -qm 'agent on other'")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", "--json", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    files = tree_files(repo, "main")
    assert "agent.txt" in files and "wip.txt" not in files
    # The agent committed onto its workspace's copy of the user's branch: the user's own is untouched.
    assert sh_git(repo, "rev-parse", "other") == other
    ended = [json.loads(line) for line in res.stdout.splitlines() if '"unit_ended"' in line]
    notes = ended[0]["notes"]
    assert any(n.startswith("the agent switched the worktree to branch other;") for n in notes), notes
    rid = json.loads(res.stdout.splitlines()[-1])["run_id"]
    assert "merged" in event_kinds(rid)


def test_agent_whose_edits_on_another_branch_conflict_fails_with_them_saved(repo: Path) -> None:
    user_branch(repo)
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("echo mine > README.md && git add README.md && git commit -qm first && "
                                "git checkout -q other && echo theirs > README.md")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    saved = f"refs/distpar/{rid}/saved/1-elsewhere"
    assert (f"the agent switched the worktree to branch other, and its edits there conflict with "
            f"distpar/{rid}/b/1 (README.md); they are saved on {saved}") in res.stdout
    assert sh_git(repo, "show", f"{saved}:README.md") == "theirs"
    assert sh_git(repo, "show", "main:README.md") == "# demo"
    assert "Traceback" not in res.stderr + res.stdout


def test_agent_that_rewinds_the_unit_branch_fails_and_loses_nothing(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"one.txt": "1"}),
        fake_batch(2, extra=[sh("git reset -q --hard HEAD~1 && echo two > two.txt")], depends_on=[1]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    branch = f"distpar/{rid}/b/1"
    assert "one.txt" in tree_files(repo, branch)  # batch 1's commit is still on the unit branch
    saved = f"refs/distpar/{rid}/saved/2-rewritten"
    assert f"which drops commits the unit started from (git reset or --amend); distpar put the branch back, and the " \
           f"agent's work is saved on {saved}" in res.stdout
    assert sh_git(repo, "show", f"{saved}:two.txt") == "two"


def test_other_workers_moving_their_branches_are_not_reported(repo: Path) -> None:
    """Every worker of a local run shares the repository's refs: what the others commit meanwhile, or what
    the user does on another branch, is not the agent's doing."""
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"one.txt": "1"}), fake_batch(2, writes={"two.txt": "2"}, sleep=0.8),
        fake_batch(3, writes={"three.txt": "3"}), fake_batch(4, writes={"four.txt": "4"}),
    ])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--strategy", "round-robin", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning: batch" not in res.stderr
