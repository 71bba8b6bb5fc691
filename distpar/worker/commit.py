"""What a unit leaves on its branch: its work committed (or, when it did not succeed, saved on a ref and the
worktree put back), and what the agent did to git that distpar undoes or reports (a switched branch, a
rewritten branch, edits inside submodules, a big file)."""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

from distpar.core.errors import GitError
from distpar.core.model import AgentOutcome, UnitStatus
from distpar.infra import gitops
from distpar.worker.common import UnitRun, safe_name


def record(u: UnitRun, status: UnitStatus, outcome: AgentOutcome) -> tuple[UnitStatus, AgentOutcome]:
    """Commit a successful unit's work on its branch; save a failed or interrupted one's on a ref (``u.saved``)
    and put the worktree back at the unit's start. A git failure here fails the unit, with its work saved."""
    ws, spec = u.ws, u.spec
    hooks = u.opts.hooks
    genv = gitops.hooks_env(u.env, hooks)  # distpar's own git commands in the worktree
    try:
        tree = gitops.status(ws)
        u.status_head = gitops.head_commit(ws)
        u.notes += nested_repositories(u, tree)
        if status.ok:
            title = f"distpar: batch {spec.uid}: {spec.description}".rstrip(": ")
            dirty = not tree.clean or u.new_files is None  # nested repositories undone: their files are new
            if not gitops.commit_all(ws, title + u.trailer, u.env, hooks, dirty=dirty) \
                    and u.status_head != u.before:
                # The agent committed everything itself (aider does): an empty commit still marks the unit as
                # done on the branch, which is what resume reads after a coordinator died.
                gitops.git(ws, "commit", "--quiet", "--no-verify", "--allow-empty", "-m",
                           f"{title} (committed by the agent){u.trailer}", env=genv)
        else:
            # Failed or interrupted work stays off the branch (it is not a finished unit) but is never lost.
            u.saved = save_and_reset(u, genv, f"{status.value}" + u.trailer, "") or u.saved
    except GitError as exc:
        # Deterministic (a signing program, a filter, a hook, a ref name): the unit fails once, with its work
        # saved; nothing is retried and no other unit is blamed.
        msg = gitops.explain(exc)
        status = UnitStatus.FAILED
        outcome = replace(outcome, result_class="git_error", ok=False, transient=False, message=msg)
        try:
            u.saved = save_and_reset(u, genv, "git_error" + u.trailer, "") or u.saved
            if u.saved:
                msg += f"; the unit's work is saved on {u.saved}"
        except GitError as again:
            msg += f"; its work could not be saved on a ref ({gitops.explain(again)}) and is left in {ws}"
        outcome = replace(outcome, message=msg)
    return status, outcome


def nested_repositories(u: UnitRun, tree: gitops.Status) -> list[str]:
    """Repositories the agent made inside the worktree (``git init`` in a folder, a ``.git`` file pointing
    elsewhere): git would record each as a gitlink to a commit that exists nowhere else, losing its files. Each
    one's ``.git`` is archived next to the unit's log and removed, so its files are committed as plain files.
    Submodules the repository declares (``.gitmodules``) are left alone. ``tree``: the worktree's status; the
    new files found on the way are kept in ``u.new_files`` (the large-file check reads them)."""
    ws = u.ws
    found: list[str] = []
    new_files = list(tree.changed)
    unstaged: list[str] = []
    gitlinks = list(tree.gitlinks)  # against HEAD: when the agent committed, HEAD is not the unit's start
    if u.status_head != u.before:
        staged = gitops.git(ws, "ls-files", "-z", "--stage").stdout.split("\0")
        gitlinks = [entry.split("\t", 1)[1] for entry in staged if entry.startswith("160000 ")]
    if gitlinks:  # a gitlink the agent staged itself (git add app/): its folder becomes an untracked one
        declared = set(gitops.submodules(ws, u.before or "HEAD")) | set(_declared_submodules(ws))
        unstaged = [p for p in gitlinks if p not in declared]
        for path in unstaged:
            gitops.git(ws, "rm", "--cached", "--quiet", "-r", "--", path)
            found.append(path)
    for entry in [*tree.untracked, *(f"{p}/" for p in unstaged)]:
        top = ws / entry
        if not entry.endswith("/") or top.is_symlink() or not top.is_dir():
            new_files.append(entry)
            continue
        for root, dirs, files in os.walk(top):  # only new folders: the tracked tree is not walked
            if ".git" in dirs or ".git" in files:
                found.append(Path(root).relative_to(ws).as_posix())
            dirs[:] = [d for d in dirs if d != ".git"]
            new_files += [os.path.relpath(os.path.join(root, f), ws) for f in files if f != ".git"]
    u.new_files = None if found else new_files  # a repository's files become the unit's: not known here
    if not found:
        return []
    declared = set(gitops.submodules(ws, u.before or "HEAD")) | set(_declared_submodules(ws))
    notes = []
    for path in dict.fromkeys(found):
        if path in declared:
            continue
        git_path = ws / path / ".git"
        if not git_path.exists() and not git_path.is_symlink():
            continue
        archive = u.log_dir / f"{u.name}.nested-{safe_name(path)}.git.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(git_path, arcname=f"{path}/.git")
        if git_path.is_dir() and not git_path.is_symlink():
            shutil.rmtree(git_path)
        else:
            git_path.unlink()
        notes.append(f"the agent made a repository of its own in {path} ({path}/.git): distpar keeps its files as "
                     f"plain files of the unit, and its .git is saved in {archive}")
    return notes


def _declared_submodules(ws: Path) -> list[str]:
    if not (ws / ".gitmodules").is_file():
        return []
    proc = gitops.git(ws, "config", "--file", ".gitmodules", "--get-regexp", r"^submodule\..*\.path$", check=False)
    return [line.partition(" ")[2] for line in proc.stdout.splitlines()]


def large_files(u: UnitRun, after: str) -> list[str]:
    """Notes on the files over the warning size that the unit's commits added. When distpar's commit holds all
    of them (the agent committed nothing itself), only the new and changed files the status named are looked
    at on disk, and git is asked only when one of them could be over the size."""
    limit = u.opts.warn_size
    if not limit or after == u.before:
        return []
    if (files := u.changed_files) is not None and not any(_could_be_over(u.ws / p, limit) for p in files):
        return []
    return [f"added {path} ({size / 2**20:.1f} MB), over the warning size of {limit / 2**20:.1f} MB; "
            "it is committed: check that it belongs in the repository"
            for path, size in gitops.large_files(u.ws, u.before, after, limit)]


def _could_be_over(path: Path, limit: int) -> bool:
    """Whether the file at ``path`` may be stored as a blob over ``limit`` bytes: within a factor of four on disk
    (a filter such as LFS's may shrink it); a file that is gone was not added."""
    try:
        return path.lstat().st_size * 4 > limit
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def marks(ws: Path) -> tuple[dict[str, str], int]:
    """What the repository's branches and the worktree's HEAD log look like before a unit's agent runs."""
    return gitops.refs(ws, "refs/heads/"), len(gitops.head_log(ws))


def return_home(u: UnitRun, env: dict[str, str], marks: tuple[dict[str, str], int]) -> tuple[list[str], str | None]:
    """Put the worktree back on the unit's branch when the agent switched it elsewhere (``git checkout
    other``), carrying over the edits it made there; report what it did to branches. Returns (notes, error):
    the error says why its edits could not be carried over (they are saved on a ref then)."""
    spec, ws = u.spec, u.ws
    want = f"refs/heads/{spec.branch}"
    heads_before, n_before = marks
    entries = gitops.head_log(ws)
    entries = entries[:max(0, len(entries) - n_before)]  # what HEAD went through in this worktree, newest first
    here = {oid for oid, _ in entries}
    notes = []
    heads = gitops.refs(ws, "refs/heads/")
    for ref, oid in heads.items():
        old = heads_before.get(ref)
        # Only what this worktree did: other workers, other runs and the user move branches meanwhile too.
        if ref == want or old == oid or ref.startswith("refs/heads/distpar/") or oid not in here:
            continue
        name = ref.removeprefix("refs/heads/")
        notes.append(f"the agent created branch {name} ({oid[:12]}); distpar left it" if old is None else
                     f"the agent moved branch {name} from {old[:12]} to {oid[:12]}; distpar left it there "
                     f"(git branch -f {name} {old[:12]} puts it back)")
    on = gitops.head_ref(ws)
    if on == want:
        return notes, _rewritten(u, env, heads_before.get(want), heads.get(want))
    cur = gitops.try_rev(ws, "HEAD")
    where = f"branch {on.removeprefix('refs/heads/')}" if on else f"a detached HEAD at {(cur or '?')[:12]}"
    if on and cur is None:
        where = f"a new unborn branch {on.removeprefix('refs/heads/')} (git checkout --orphan)"
    # Where it switched to: the last "checkout: moving from <our branch>" in the worktree's HEAD log, else the
    # branch's value before the unit, else the fork point; an orphan branch shares no history with ours: its
    # files are then the agent's edits of our branch's tip.
    start = next((oid for oid, message in entries
                  if message.startswith(f"checkout: moving from {spec.branch} to ")), None)
    tip = gitops.rev(ws, want)
    if start is None:
        start = heads_before.get(on or "") or (
            gitops.git(ws, "merge-base", tip, cur, check=False).stdout.strip() if cur else "") or tip
    if cur is None:  # unborn: the working tree is all there is (nothing was committed on it)
        theirs = gitops.snapshot(ws, f"distpar: work of batch {spec.uid} on {where}", env, parent=tip)
    else:
        theirs = gitops.snapshot(ws, f"distpar: work of batch {spec.uid} on {where}", env) or cur
    if theirs and not gitops.is_ancestor(ws, start, theirs) and gitops.git(
            ws, "merge-base", start, theirs, check=False).returncode != 0:
        start = tip  # an orphan branch with commits: its tree against our tip
    gitops.git(ws, "checkout", "--quiet", "--force", spec.branch, env=env)
    gitops.git(ws, "clean", "-fdq", env=env)
    if not (theirs and start) or gitops.tree_of(ws, theirs) == gitops.tree_of(ws, start):
        return [*notes, f"the agent switched the worktree to {where} and changed nothing there; distpar switched "
                        f"it back to {spec.branch}"], None
    # Its edits are the change from ``start`` to ``theirs``: applied to our branch with a three-way merge
    # whose base is ``start`` (two commits on top of it, so git 2.38's merge-tree picks that base).
    ours_c = gitops.out(ws, "commit-tree", gitops.tree_of(ws, tip), "-p", start, "-m", "ours", env=env)
    theirs_c = gitops.out(ws, "commit-tree", gitops.tree_of(ws, theirs), "-p", start, "-m", "theirs", env=env)
    merged = gitops.git(ws, "merge-tree", "--write-tree", "--name-only", "--no-messages", ours_c, theirs_c,
                        check=False)
    if merged.returncode == 0:
        gitops.git(ws, "read-tree", "-u", "--reset", merged.stdout.split()[0], env=env)
        return [*notes, f"the agent switched the worktree to {where}; distpar switched it back to {spec.branch} "
                        "and kept the agent's edits"], None
    ref = f"refs/distpar/{u.settings.run_id}/saved/{safe_name(spec.uid)}-elsewhere"
    gitops.update_ref(ws, ref, theirs)
    files = ", ".join(merged.stdout.splitlines()[1:6])
    return notes, (f"the agent switched the worktree to {where}, and its edits there conflict with "
                   f"{spec.branch} ({files}); they are saved on {ref}")


def _rewritten(u: UnitRun, env: dict[str, str], before: str | None, tip: str | None) -> str | None:
    """The agent reset or amended the unit's branch below where the unit started (earlier units' commits
    would be dropped): its work is saved on a ref, the branch put back, and the unit fails saying so. ``tip``:
    the branch now (HEAD is on it)."""
    spec, ws = u.spec, u.ws
    tip = tip or gitops.rev(ws, f"refs/heads/{spec.branch}")
    if before is None or tip == before or gitops.is_ancestor(ws, before, tip):
        return None
    ref = f"refs/distpar/{u.settings.run_id}/saved/{safe_name(spec.uid)}-rewritten"
    gitops.update_ref(ws, ref, gitops.snapshot(ws, f"distpar: work of batch {spec.uid} (branch rewritten)", env)
                      or tip)
    gitops.git(ws, "reset", "--quiet", "--hard", before, env=env)
    gitops.git(ws, "clean", "-fdq", env=env)
    return (f"the agent moved {spec.branch} from {before[:12]} to {tip[:12]}, which drops commits the unit started "
            f"from (git reset or --amend); distpar put the branch back, and the agent's work is saved on {ref}")


def submodule_edits(ws: Path, log_dir: Path, name: str, before: str) -> str | None:
    """Edits inside a submodule are not committed by distpar: when a unit made some, they are saved in an
    archive next to its log and the unit fails saying so (never ok with work dropped)."""
    edited: list[str] = []
    declared = gitops.submodules(ws, before)  # known for a commit once asked (nested_repositories asked)
    if not declared and not (ws / ".gitmodules").exists():
        return None  # no submodules (the cheap check: every unit runs this)
    for path in declared:
        d = ws / path
        if (d / ".git").exists():
            if gitops.out(ws, "status", "--porcelain", "--ignore-submodules=none", "--", path):
                edited.append(path)
        elif d.is_dir() and any(d.iterdir()):
            edited.append(path)
    if not edited:
        return None
    archive = log_dir / f"{name}.submodules.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in edited:
            tar.add(ws / path, arcname=path, filter=lambda t: None if "/.git/" in f"/{t.name}/" else t)
    for path in edited:  # back to what the branch records, so the next unit starts clean
        d = ws / path
        if (d / ".git").exists():
            gitops.git(d, "reset", "--quiet", "--hard", check=False)
            gitops.git(d, "clean", "-fdq", check=False)
            gitops.git(ws, "submodule", "update", "--quiet", "--force", "--", path, check=False)
        else:
            for child in d.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return (f"the agent edited files inside submodule(s) {', '.join(edited)}, which distpar does not commit: "
            f"those files are saved in {archive}")


def wrecked(u: UnitRun) -> str | None:
    """Why the workspace is no longer a checkout distpar can use (the agent ran ``rm -rf .git`` or ``git worktree
    remove --force .``), or None when it still is."""
    ws = u.ws
    if not ws.is_dir():
        return f"the agent destroyed its workspace {ws} (removed it: git worktree remove?)"
    dot_git = ws / ".git"  # a repository of its own (a directory) or a linked worktree (a file naming its git dir)
    if not (dot_git.is_dir() or dot_git.is_file()) or not (gitops.git_dir(ws) / "HEAD").is_file():
        return f"the agent destroyed its workspace {ws} (its .git is gone or broken: rm -rf .git?)"
    return None


def salvage(u: UnitRun, source: str | None) -> str:
    """What is left of a destroyed workspace: its files archived next to the unit's log, the directory removed
    (and the worktree's registration pruned from ``source``) so that the worker's next unit gets a fresh
    workspace. Returns a sentence for the unit's error."""
    ws = u.ws
    said = ""
    if ws.is_dir():
        archive = u.log_dir / f"{u.name}.workspace.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for child in sorted(ws.iterdir()):
                if child.name != ".git":
                    tar.add(child, arcname=child.name)
        said = f"; the files left on disk are saved in {archive}"
        shutil.rmtree(ws, ignore_errors=True)
    else:
        said = "; nothing was left on disk to save"
    if source:
        gitops.worktree_prune(source)
    return said + "; the worker's next unit gets a fresh workspace"


def edited(ws: Path, before: str) -> bool:
    return gitops.out(ws, "rev-parse", "HEAD") != before or bool(gitops.out(ws, "status", "--porcelain"))


def save_and_reset(u: UnitRun, env: dict[str, str], what: str, suffix: str) -> str | None:
    """Keep the unit's edits (and any commits the agent made itself) on a ref, then put the worktree back at
    the unit's start commit. Returns the ref, or None when there was nothing to keep."""
    ws, before = u.ws, u.before
    head = gitops.out(ws, "rev-parse", "HEAD")
    snap = gitops.snapshot(ws, f"distpar: unfinished work of batch {u.spec.uid}: {what}", env)
    keep = snap or (head if head != before else None)
    ref = None
    if keep:
        ref = f"refs/distpar/{u.settings.run_id}/saved/{u.name}{suffix}"  # names.key: always ref-safe
        gitops.update_ref(ws, ref, keep)
    gitops.git(ws, "reset", "--quiet", "--hard", before)
    gitops.git(ws, "clean", "-fdq")
    return ref
