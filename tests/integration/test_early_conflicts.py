"""Early conflict checks at the end of a run: what is still queued is checked in one batch, and only the units
whose paths meet others' are merged into the preview."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from distpar.coordinator.deps import EarlyConflicts, Found, Preview
from distpar.testing.builders import IDENTITY, make_repo, sh_git


def _unit(repo: Path, name: str, base: str, files: dict[str, str]) -> str:
    ws = repo.parent / f"wt-{name}"
    sh_git(repo, "worktree", "add", "--quiet", "-b", name, str(ws), base)
    for path, text in files.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    sh_git(ws, "add", "--all")
    sh_git(ws, "commit", "--quiet", "-m", name)
    tip = sh_git(ws, "rev-parse", "HEAD")
    sh_git(repo, "worktree", "remove", "--force", str(ws))
    return tip


def test_settle_checks_the_queue_in_one_batch_merging_only_units_that_meet_others(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    start = sh_git(repo, "rev-parse", "HEAD")
    units = {"a": _unit(repo, "a", start, {"same.txt": "a\n"}), "b": _unit(repo, "b", start, {"same.txt": "b\n"}),
             "c": _unit(repo, "c", start, {"c.txt": "c\n"}), "d": _unit(repo, "d", start, {"dir/d.txt": "d\n"}),
             "e": _unit(repo, "e", start, {"dir": "a file where d has a directory\n"})}
    preview = Preview(repo, start, dict(IDENTITY), start)
    merged: list[str] = []
    entered, release = threading.Event(), threading.Event()
    real_add = preview.add

    def add(uid: str, commit: str, paths: set[str] | None = None) -> Found | None:
        merged.append(uid)
        if uid == "a":  # the check under way when the last unit ends
            entered.set()
            assert release.wait(30)
        return real_add(uid, commit, paths)

    preview.add = add  # type: ignore[method-assign]
    reported: list[tuple[str, Found]] = []
    early = EarlyConflicts(preview, lambda uid, found: reported.append((uid, found)), inline=False)
    early.check("a", units["a"])
    assert entered.wait(30)
    for uid in "bcde":
        early.check(uid, units[uid])
    settling = threading.Thread(target=early.settle)
    settling.start()
    deadline = time.monotonic() + 30
    while early._queued and time.monotonic() < deadline:  # settle has taken the queue over
        time.sleep(0.01)
    release.set()
    settling.join(30)
    assert not settling.is_alive()
    # b meets a (in the preview by then), d and e meet each other; c meets nothing and is never merged.
    assert merged == ["a", "b", "d", "e"]
    assert [uid for uid, _ in reported] == ["b", "e"]
    assert reported[0][1] == (("same.txt",), ("a",))


def test_settle_without_checks_is_a_no_op(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    start = sh_git(repo, "rev-parse", "HEAD")
    early = EarlyConflicts(Preview(repo, start, dict(IDENTITY), start), lambda uid, found: None, inline=False)
    early.settle()


def test_units_whose_paths_meet_nothing_join_the_preview_without_a_merge(tmp_path: Path) -> None:
    """The worker says which paths a unit changed: a unit that meets no member's paths cannot conflict, so it is
    not merged (no git process, the preview's head does not move) until a unit that does meet them arrives; then
    the pending ones are merged first and the conflict is found, naming the unit it is with."""
    repo = make_repo(tmp_path / "repo")
    start = sh_git(repo, "rev-parse", "HEAD")
    units = {"a": _unit(repo, "a", start, {"same.txt": "a\n"}), "c": _unit(repo, "c", start, {"c.txt": "c\n"}),
             "b": _unit(repo, "b", start, {"same.txt": "b\n"}), "d": _unit(repo, "d", start, {"d.txt": "d\n"})}
    preview = Preview(repo, start, dict(IDENTITY), start, ref="refs/distpar/t/preview/head")
    assert preview.add("a", units["a"], {"same.txt"}) is None
    assert preview.add("c", units["c"], {"c.txt"}) is None
    assert preview.pending == {"a": units["a"], "c": units["c"]}
    assert sh_git(repo, "for-each-ref", "refs/distpar/") == ""  # nothing merged, no ref written
    found = preview.add("b", units["b"], {"same.txt"})
    assert found == (("same.txt",), ("a",))
    assert preview.pending == {}
    merged = preview.head
    assert {"same.txt", "c.txt"} <= set(sh_git(repo, "ls-tree", "--name-only", merged).split())
    assert sh_git(repo, "cat-file", "-p", f"{merged}:same.txt") == "a"  # b stayed out: it conflicts
    # A unit whose paths are not known is merged at once, and so is every unit after it.
    assert preview.add("d", units["d"]) is None and preview.touched is None
    assert "d.txt" in sh_git(repo, "ls-tree", "--name-only", preview.head).split()
