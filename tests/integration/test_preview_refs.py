"""The early conflict check's merges are kept reachable (issue 21, item 12): a ``git gc --prune=now`` run in the
user's repository while a run goes on must not prune the preview's merge commits. Real git, real CLI, the fake
agent running the gc between two preview merges."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, sh_git, tree_files, write_plan
from tests.conftest import run_distpar

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("inline", [True, False], ids=["stop-on-conflict", "off-the-dispatch-path"])
def test_gc_prune_now_during_a_run_keeps_the_preview(repo: Path, tmp_path: Path, inline: bool) -> None:
    seen = tmp_path / "refs-during-gc.txt"
    script = tmp_path / "gc.sh"
    script.write_text(f'git -C "{repo}" for-each-ref "--format=%(refname)" refs/distpar/ > "{seen}"\n'
                      f'git -C "{repo}" gc --quiet --prune=now\n')
    gc = f"@fake sh 'sh -e {script}'"
    (repo / "shared.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    sh_git(repo, "add", "shared.txt")
    sh_git(repo, "commit", "--quiet", "-m", "shared")

    def edit(line: int) -> str:  # each unit its own line of one file: the preview merges them for real
        return f"@fake sh 'sed -i {line}s/.*/edited/ shared.txt'"

    # One worker, in plan order: a, then b (the preview merges a and b: a commit no branch holds), then c prunes
    # everything unreachable, then d merges into that preview.
    plan = write_plan(repo.parent / "p.md", [fake_batch("a", extra=[edit(1)]), fake_batch("b", extra=[edit(10)]),
                                             fake_batch("c", writes={"c.txt": "c"}, extra=[gc]),
                                             fake_batch("d", extra=[edit(5)])])
    args = ["--stop-on-conflict"] if inline else []
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", *args, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "early conflict check" not in res.stderr and "conflict found early" not in res.stdout
    during = seen.read_text().split()
    assert [r for r in during if r.endswith("/preview/head")], during  # the merge of a and b, held by a ref
    assert "c.txt" in tree_files(repo)
    assert [n for n, line in enumerate((repo / "shared.txt").read_text().splitlines(), 1) if line == "edited"] \
        == [1, 5, 10]
    assert sh_git(repo, "for-each-ref", "refs/distpar/") == ""  # the preview's ref went with the run


def test_clean_removes_a_preview_ref_a_crashed_run_left(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch("a", writes={"a.txt": "a"}),
                                             fake_batch("b", writes={"b.txt": "b"}, extra=["@fake fail 3"])])
    assert run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo).returncode == 1
    (branch,) = [r for r in sh_git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/distpar/").split()
                 if r.endswith("/b/a")]
    run_id = branch.split("/")[3]
    tree = sh_git(repo, "rev-parse", f"{branch}^{{tree}}")
    merge = sh_git(repo, "commit-tree", tree, "-p", "main", "-p", branch, "-m", "distpar: preview a")
    ref = f"refs/distpar/{run_id}/preview/head"  # as a coordinator killed mid-run leaves it
    sh_git(repo, "update-ref", ref, merge)
    dry = run_distpar("clean", "--dry-run", cwd=repo)
    line = next(x for x in dry.stdout.splitlines() if ref in x)
    assert line.startswith("would remove") and "preview" in line, dry.stdout
    assert run_distpar("clean", cwd=repo).returncode == 0
    assert sh_git(repo, "for-each-ref", ref) == ""
