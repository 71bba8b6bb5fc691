"""The plan-order merge: the same trees, parents and conflicts as one ``git merge --no-ff`` after another, with
the integration branch written once; fast merges (one fast-import) only where no content merge is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpar.coordinator.merge import merge_branches
from distpar.infra import gitops
from distpar.testing.builders import IDENTITY, make_repo, sh_git, tree_files


def _unit(repo: Path, name: str, base: str, files: dict[str, str | None]) -> str:
    """A branch ``name`` from ``base`` with one commit writing (or, for None, deleting) ``files``."""
    ws = repo.parent / f"wt-{name}"
    sh_git(repo, "worktree", "add", "--quiet", "-b", name, str(ws), base)
    for path, text in files.items():
        p = ws / path
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    sh_git(ws, "add", "--all")
    sh_git(ws, "commit", "--quiet", "-m", f"unit {name}")
    tip = sh_git(ws, "rev-parse", "HEAD")
    sh_git(repo, "worktree", "remove", "--force", str(ws))
    return tip


def _reference(repo: Path, base: str, branches: list[tuple[str, str]]) -> tuple[str | None, list[str]]:
    """What plain git does: ``git merge --no-ff`` of each branch in order, in a scratch worktree. Returns the
    final tree (None at a conflict) and the branches merged."""
    ws = repo.parent / "wt-reference"
    sh_git(repo, "worktree", "add", "--quiet", "--detach", str(ws), base)
    merged = []
    try:
        for name, tip in branches:
            if gitops.is_ancestor(ws, tip, "HEAD"):
                continue
            proc = gitops.git(ws, "merge", "--no-ff", "--quiet", "-m", f"m {name}", tip, env=IDENTITY, check=False)
            if proc.returncode != 0:
                return None, merged
            merged.append(name)
        return sh_git(ws, "rev-parse", "HEAD^{tree}"), merged
    finally:
        gitops.git(ws, "merge", "--abort", check=False)
        sh_git(repo, "worktree", "remove", "--force", str(ws))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# r\n", "src/a.py": "A = 1\n" * 20, "lib": "file\n"})


def _merge(repo: Path, base: str, branches: list[tuple[str, str]]) -> tuple[object, int]:
    """merge_branches, with the git processes it started counted."""
    calls = []
    real = gitops.git

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args[1:3])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    gitops.git = counting  # type: ignore[assignment]
    try:
        result = merge_branches(repo, base, branches, "integ", "run-1", dict(IDENTITY))
    finally:
        gitops.git = real
    return result, len(calls)


def test_independent_units_merge_in_a_few_git_processes_with_the_trees_and_parents_of_git_merge(repo: Path) -> None:
    base = sh_git(repo, "rev-parse", "HEAD")
    branches = [(f"u{i}", _unit(repo, f"u{i}", base, {f"out/f {i}.txt": f"{i}\n", f"deep/d{i % 3}/g{i}": "x\n"}))
                for i in range(30)]
    result, processes = _merge(repo, base, branches)
    tree, merged = _reference(repo, base, branches)
    assert result.conflict is None and list(result.merged) == merged == [n for n, _ in branches]
    assert sh_git(repo, "rev-parse", f"{result.head}^{{tree}}") == tree
    assert sh_git(repo, "rev-parse", "refs/heads/integ") == result.head
    assert processes < 12  # not one per unit
    # a chain of --no-ff merges in plan order: first parent the merge before, second parent the unit
    first_parents = sh_git(repo, "rev-list", "--first-parent", f"{base}..{result.head}").splitlines()
    assert len(first_parents) == 30
    assert [sh_git(repo, "rev-parse", f"{c}^2") for c in reversed(first_parents)] == [t for _, t in branches]
    log = sh_git(repo, "log", "-1", "--format=%an <%ae>|%B", result.head)
    assert log == f"{IDENTITY['GIT_AUTHOR_NAME']} <{IDENTITY['GIT_AUTHOR_EMAIL']}>|distpar: merge u29\n\n" \
                  "Distpar-Run: run-1"
    assert sh_git(repo, "cat-file", "commit", result.head).endswith("Distpar-Run: run-1")  # one final newline
    assert "error" not in sh_git(repo, "fsck", "--no-progress", "--connectivity-only")  # the objects are sound


@pytest.mark.parametrize("case", ["same-file-other-hunk", "deletion", "file-vs-dir", "dir-vs-file", "dependency",
                                  "rename"])
def test_merges_that_need_git_are_the_same_as_git_merge(repo: Path, case: str) -> None:
    base = sh_git(repo, "rev-parse", "HEAD")
    one = _unit(repo, "one", base, {"one.txt": "1\n"})
    if case == "same-file-other-hunk":
        two = _unit(repo, "two", base, {"src/a.py": "A = 2\n" + "A = 1\n" * 19})
        three = _unit(repo, "three", base, {"src/a.py": "A = 1\n" * 19 + "A = 3\n"})
    elif case == "deletion":
        two = _unit(repo, "two", base, {"lib": None})
        three = _unit(repo, "three", base, {"three.txt": "3\n"})
    elif case == "file-vs-dir":
        two = _unit(repo, "two", base, {"new/x": "x\n"})
        three = _unit(repo, "three", base, {"new": "y\n"})
    elif case == "dir-vs-file":
        two = _unit(repo, "two", base, {"new": "y\n"})
        three = _unit(repo, "three", base, {"new/x": "x\n"})
    elif case == "dependency":
        two = _unit(repo, "two", one, {"two.txt": "2\n"})
        three = _unit(repo, "three", base, {"three.txt": "3\n"})
    else:  # one side renames a file the other changes
        two = _unit(repo, "two", base, {"src/a.py": None, "src/renamed.py": "A = 1\n" * 20})
        three = _unit(repo, "three", base, {"src/a.py": "A = 1\n" * 19 + "A = 3\n"})
    branches = [("one", one), ("two", two), ("three", three), ("four", _unit(repo, "four", base, {"4": "4\n"}))]
    result, _ = _merge(repo, base, branches)
    tree, merged = _reference(repo, base, branches)
    assert list(result.merged) == merged
    assert (result.conflict is None) == (tree is not None) == (case not in ("file-vs-dir", "dir-vs-file"))
    assert sh_git(repo, "rev-parse", f"{result.head}^{{tree}}") == tree if tree else result.conflict.theirs == "three"


def test_a_conflict_leaves_the_integration_branch_at_everything_merged_before_it(repo: Path) -> None:
    base = sh_git(repo, "rev-parse", "HEAD")
    branches = [("one", _unit(repo, "one", base, {"one.txt": "1\n"})),
                ("two", _unit(repo, "two", base, {"src/a.py": "TWO\n"})),
                ("three", _unit(repo, "three", base, {"src/a.py": "THREE\n"})),
                ("four", _unit(repo, "four", base, {"four.txt": "4\n"}))]
    result, _ = _merge(repo, base, branches)
    assert result.conflict is not None and result.conflict.theirs == "three"
    assert result.conflict.files == ("src/a.py",)
    assert result.merged == ("one", "two")
    assert sh_git(repo, "rev-parse", "refs/heads/integ") == result.head
    assert tree_files(repo, result.head) == {**tree_files(repo, base), "one.txt": tree_files(repo, "one")["one.txt"],
                                             "src/a.py": tree_files(repo, "two")["src/a.py"]}
    assert sh_git(repo, "rev-parse", "refs/heads/three") == branches[2][1]  # the conflicting branch untouched


def test_when_fast_import_fails_every_merge_goes_through_merge_tree(repo: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base = sh_git(repo, "rev-parse", "HEAD")
    branches = [(f"u{i}", _unit(repo, f"u{i}", base, {f"f{i}": f"{i}\n"})) for i in range(3)]
    real = gitops.git
    tried = []

    def failing(cwd: str | Path, *args: str, **kwargs: object) -> object:
        if "fast-import" in args:
            tried.append(args)
            return real(cwd, "fast-import", "--no-such-option", check=False)
        return real(cwd, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "git", failing)
    result = merge_branches(repo, base, branches, "integ", "run-1", dict(IDENTITY))
    tree, merged = _reference(repo, base, branches)
    assert tried and list(result.merged) == merged
    assert sh_git(repo, "rev-parse", f"{result.head}^{{tree}}") == tree


def test_a_resumed_merge_skips_what_the_integration_branch_holds(repo: Path) -> None:
    base = sh_git(repo, "rev-parse", "HEAD")
    branches = [(f"u{i}", _unit(repo, f"u{i}", base, {f"f{i}": f"{i}\n"})) for i in range(4)]
    first, _ = _merge(repo, base, branches[:2])
    again, _ = _merge(repo, first.head, branches)
    assert again.merged == ("u2", "u3")
    assert sh_git(repo, "rev-parse", f"{again.head}~2") == first.head
    tree, _ = _reference(repo, base, branches)
    assert sh_git(repo, "rev-parse", f"{again.head}^{{tree}}") == tree
    nothing, _ = _merge(repo, again.head, branches)
    assert nothing.merged == () and nothing.head == again.head
