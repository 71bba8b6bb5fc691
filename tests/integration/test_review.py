"""Review before landing: --review stops after the gates with everything integrated and the target untouched;
distpar diff shows a unit's diff against its base and the integrated diff; distpar land lands it (the gate again when
the target moved), and land --without leaves units and their dependents out, merges the rest again and gates it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, run_id_of

pytestmark = pytest.mark.integration

GATE = "test ! -e broken.txt || { echo 'broken.txt is here'; exit 1; }"


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def review_run(repo: Path, batches: list[dict[str, object]], *flags: str) -> str:
    plan = write_plan(repo.parent / "p.md", batches)
    start = gitops.rev(repo, "main")
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", "--review", *flags, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert f"run {rid}: review" in res.stdout
    assert f"distpar land {rid}" in res.stdout and f"distpar diff {rid}" in res.stdout
    assert gitops.rev(repo, "main") == start and sh_git(repo, "status", "--porcelain") == ""
    assert journal().run(rid)["state"] == "review"  # type: ignore[index]
    return rid


def test_review_then_diff_then_land(repo: Path) -> None:
    rid = review_run(repo, [fake_batch("a", writes={"a.txt": "from a\n"}),
                            fake_batch("b", writes={"b.txt": "from b\n"}, depends_on=["a"])],
                     "--verify-merged", "test -e a.txt")
    assert f"distpar land {rid}" in run_distpar("status", rid, cwd=repo).stdout
    unit = run_distpar("diff", rid, "b", cwd=repo)
    assert unit.returncode == 0, unit.stderr
    assert "+from b" in unit.stdout and "a.txt" not in unit.stdout  # against its base, which holds a's work
    whole = run_distpar("diff", rid, cwd=repo)
    assert "+from a" in whole.stdout and "+from b" in whole.stdout
    assert run_distpar("diff", rid, "nope", cwd=repo).returncode == ExitCode.USAGE
    landed = run_distpar("land", rid, cwd=repo)
    assert landed.returncode == 0, landed.stdout + landed.stderr
    assert "merged into main" in landed.stdout
    assert (repo / "a.txt").read_text() == "from a\n" and (repo / "b.txt").read_text() == "from b\n"
    assert sh_git(repo, "status", "--porcelain") == "" and journal().run(rid)["state"] == "ok"  # type: ignore[index]
    checks = [e for e in journal().events(rid) if e.kind == "verify_merged"]
    assert len(checks) == 1  # the target had not moved: the gate that passed before review stands
    again = run_distpar("land", rid, cwd=repo)
    assert again.returncode == ExitCode.USAGE and "not waiting for review" in again.stderr


def test_land_without_a_unit_leaves_its_dependents_out_and_gates_the_rest_again(repo: Path) -> None:
    rid = review_run(repo, [fake_batch("a", writes={"a.txt": "a\n"}),
                            fake_batch("b", writes={"b.txt": "b\n"}),
                            fake_batch("c", writes={"c.txt": "c\n"}, depends_on=["b"]),
                            fake_batch("d", writes={"d.txt": "d\n"})],
                     "--verify-merged", "echo gate ran; true")
    res = run_distpar("land", rid, "--without", "b", "--json", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["left_out"] == ["b", "c"] and out["dependents"] == ["c"] and out["gated"]
    files = set(sh_git(repo, "ls-tree", "--name-only", "main").split())
    assert {"a.txt", "d.txt"} <= files and not {"b.txt", "c.txt"} & files
    assert (repo / "d.txt").exists() and not (repo / "b.txt").exists()
    # The left-out work stays on refs, and so does what was reviewed.
    refs = sh_git(repo, "for-each-ref", "--format=%(refname)", f"refs/distpar/{rid}/saved/").split()
    assert {f"refs/distpar/{rid}/saved/b-left-out", f"refs/distpar/{rid}/saved/c-left-out",
            f"refs/distpar/{rid}/saved/reviewed"} <= set(refs)
    assert sh_git(repo, "show", f"refs/distpar/{rid}/saved/c-left-out:c.txt") == "c"
    assert len([e for e in journal().events(rid) if e.kind == "verify_merged"]) == 2


def test_land_gates_again_when_the_target_moved_and_a_failing_gate_lands_nothing(repo: Path) -> None:
    rid = review_run(repo, [fake_batch("a", writes={"a.txt": "a\n"})], "--verify-merged", GATE)
    (repo / "broken.txt").write_text("x\n")  # the target moves meanwhile, and breaks the gate
    sh_git(repo, "add", "broken.txt")
    sh_git(repo, "commit", "-q", "-m", "someone else's commit")
    moved = gitops.rev(repo, "main")
    res = run_distpar("land", rid, cwd=repo)
    assert res.returncode == ExitCode.GATE_FAILED, res.stdout + res.stderr
    assert "broken.txt is here" in res.stdout and "nothing landed" in res.stdout
    assert gitops.rev(repo, "main") == moved and journal().run(rid)["state"] == "review"  # type: ignore[index]
    sh_git(repo, "rm", "-q", "broken.txt")
    sh_git(repo, "commit", "-q", "-m", "fixed")
    ok = run_distpar("land", rid, cwd=repo)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (repo / "a.txt").exists() and sh_git(repo, "status", "--porcelain") == ""


def test_land_refuses_an_unknown_unit_and_changes_nothing(repo: Path) -> None:
    rid = review_run(repo, [fake_batch("a", writes={"a.txt": "a\n"})])
    start = gitops.rev(repo, "main")
    res = run_distpar("land", rid, "--without", "zz", cwd=repo)
    assert res.returncode == ExitCode.USAGE and "no unit 'zz'" in res.stderr
    assert gitops.rev(repo, "main") == start and journal().run(rid)["state"] == "review"  # type: ignore[index]
