"""Removing a finished run's local workspaces off the critical path: what an agent left uncommitted, and what a
workspace's branches hold that never came back, is saved on refs first (never deleted unsaved); the workspaces
are moved aside at once (git forgets the linked ones with one ``worktree prune``) and a thread deletes their
files while the run reports, journaled. ``distpar clean`` waits for a removal under way and finishes one an
exiting process cut short."""

from __future__ import annotations

import atexit
import fcntl
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from distpar.coordinator.journal import Journal
from distpar.coordinator.site import RunSite
from distpar.core.errors import DistparError
from distpar.infra import gitops, paths, pool
from distpar.infra.workspace import workspace_ready

log = logging.getLogger(__name__)

REMOVAL_WAIT = 120.0  # how long a process that is exiting waits for its runs' workspaces to be removed
REMOVING = ".removing"  # under the worktrees' base: workspaces being removed (or whose removal was cut short)
_removals: list[threading.Thread] = []
_removals_lock = threading.Lock()
_at_exit: list[object] = []  # the exit hook, once registered


def removal_root(repo: Path) -> Path:
    """Where workspaces wait to be removed: ``<worktrees base>/.removing/<run id>/...``."""
    return paths.worktrees_base(repo) / REMOVING


def cleanup(site: RunSite, journal: Journal, workspaces: list[Path]) -> list[str]:
    """The local workers' workspaces: their uncommitted work saved on a ref (never deleted unsaved), then moved
    aside and forgotten by git (one ``worktree prune``); their files are removed by a thread, journaled
    (``workspaces_removing``, ``workspaces_removed``), so the run's report does not wait for them. The process
    waits for the removal (at most ``REMOVAL_WAIT``) before it exits; ``distpar clean`` removes what an
    interrupted one left. Returns the refs it saved work on."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="distpar-cleanup") as pool:
        found = list(pool.map(lambda ws: _save(site, ws), workspaces))
    _remove(site, journal, [ws for ws, refs in found if refs is not None])
    return [ref for _, refs in found for ref in refs or ()]


def give_back(site: RunSite, journal: Journal) -> list[str]:
    """``--reuse-workspaces``, local: the workspaces this run took from the pool go back to it, each saved first
    like a removed one (uncommitted work and branches that never came back, on refs of the repository) and then
    emptied of the run (checked out clean, its branches gone; ignored files stay). One whose work could not be
    saved is marked as holding work (the pool never hands it out again). Journaled (``workspaces_given_back``).
    Returns the refs it saved work on."""
    leases = pool.held(site.run_id)
    saved: list[str] = []
    kept: list[str] = []
    for lease in leases:
        refs = _saved_on(site, lease.path) if lease.path.exists() else []
        if refs is None:
            pool.busy_marker(lease.path).touch()
            kept.append(str(lease.path))
        else:
            saved += refs
            _empty(lease.path)
        pool.release(lease)
    journal.event(site.run_id, "workspaces_given_back", workspaces=[str(lease.path) for lease in leases],
                  kept=kept, saved=saved)
    paths.remove_worktrees_root(site.repo, site.run_id)
    return saved


def _empty(ws: Path) -> None:
    """A pooled workspace with nothing of the run left in it: HEAD detached where it is, the files as committed
    (ignored ones stay), the branches gone (what they held came back or was saved)."""
    try:
        gitops.git(ws, "checkout", "--quiet", "--force", "--detach")
        gitops.git(ws, "clean", "-fdq")
        branches = gitops.out(ws, "for-each-ref", "--format=%(refname)", "refs/heads/").split()
        if branches:
            gitops.git(ws, "update-ref", "--stdin", input="".join(f"delete {b}\n" for b in branches))
    except DistparError:
        log.exception("could not empty %s; the next run that takes it checks it again", ws)


def _save(site: RunSite, ws: Path) -> tuple[Path, list[str] | None]:
    """Save ``ws``'s uncommitted work on a ref, and (a repository of its own) the commits on its branches that
    never came back. The refs (none when there was nothing to save), or None when it could not be saved or does
    not exist (then there is nothing to remove)."""
    return ws, _saved_on(site, ws) if ws.exists() else None


def _saved_on(site: RunSite, ws: Path) -> list[str] | None:
    try:
        return save_left(site.repo, ws, f"refs/distpar/{site.run_id}/saved/{ws.name}-cleanup",
                         "distpar: uncommitted work found at cleanup", site.env)
    except DistparError:
        log.exception("could not snapshot %s; leaving it in place", ws)
        return None


def save_left(repo: Path, ws: Path, ref: str, message: str, env: Mapping[str, str]) -> list[str]:
    """What the workspace ``ws`` holds that ``repo`` does not, saved on refs of ``repo``: its uncommitted work on
    ``ref`` (a snapshot; only in a workspace that was fully checked out: none ran in another), and, a repository
    of its own, the commits on its branches that never came back on ``<ref>-<branch>``. Returns those refs."""
    saved = []
    if workspace_ready(ws) and gitops.out(ws, "status", "--porcelain"):
        snap = gitops.snapshot(ws, message, env)
        if snap:
            gitops.update_ref(ws, ref, snap)  # the snapshot is in the workspace's own object store
            gitops.fetch(repo, ws, [f"+{ref}:{ref}"])
            saved.append(ref)
    if gitops.is_own_repository(ws):
        saved += gitops.save_unreturned(repo, ws, ref)
    return saved


def _remove(site: RunSite, journal: Journal, workspaces: list[Path]) -> None:
    if not workspaces:
        paths.remove_worktrees_root(site.repo, site.run_id)
        return
    trash = removal_root(site.repo) / site.run_id / secrets.token_hex(4)
    trash.mkdir(parents=True)
    lock = open(trash.with_suffix(".lock"), "w")  # noqa: SIM115 - held until the files are gone (clean waits)
    fcntl.flock(lock, fcntl.LOCK_EX)
    moved: list[Path] = []
    with gitops.repo_lock(site.repo, "worktree"):  # prune must not see another run's half-made worktree
        left = []
        for ws in workspaces:
            try:
                ws.rename(trash / ws.name)
                moved.append(trash / ws.name)
            except OSError:  # another file system, say: git removes it now
                left.append(ws)
        gitops.git(site.repo, "worktree", "prune", check=False)
    gitops.workspace_remove(site.repo, *left)
    paths.remove_worktrees_root(site.repo, site.run_id)
    journal.event(site.run_id, "workspaces_removing", workspaces=[str(ws) for ws in workspaces],
                      moved_to=str(trash))
    journal_path = journal.path
    thread = threading.Thread(target=_remove_files, args=(site.run_id, trash, lock, journal_path, len(moved)),
                              name=f"distpar-remove-{site.run_id}", daemon=True)
    with _removals_lock:
        _removals[:] = [t for t in _removals if t.is_alive()]
        _removals.append(thread)
        if not _at_exit:
            _at_exit.append(atexit.register(wait_for_removals))
    thread.start()


def _remove_files(run_id: str, trash: Path, lock: IO[str], journal_path: Path, count: int) -> None:
    t = time.monotonic()
    error = ""
    try:
        shutil.rmtree(trash)
        trash.with_suffix(".lock").unlink()
    except OSError as exc:
        error = str(exc)
        log.warning("could not remove %s: %s (distpar clean removes it)", trash, exc)
    finally:
        lock.close()  # releases the lock
    for d in (trash.parent, trash.parent.parent, trash.parent.parent.parent):  # <run>, .removing, the base
        try:
            d.rmdir()
        except OSError:  # not empty: another run's
            break
    try:
        journal = Journal(journal_path)
        try:
            journal.event(run_id, "workspaces_removed", count=count, seconds=round(time.monotonic() - t, 3),
                          error=error)
        finally:
            journal.close()
    except DistparError:
        log.exception("could not journal the removal of %s", trash)


def wait_for_removal(run_dir: Path, timeout: float = REMOVAL_WAIT) -> None:
    """Wait (at most ``timeout``) while a coordinator is still removing the files under ``run_dir`` (one run's
    directory under ``removal_root``): what is left afterwards is a removal that was cut short."""
    deadline = time.monotonic() + timeout
    for path in sorted(run_dir.glob("*.lock")):
        try:
            f = open(path)  # noqa: SIM115 - closed by the with below
        except OSError:  # it ended meanwhile
            continue
        with f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.05)


def wait_for_removals(timeout: float = REMOVAL_WAIT) -> bool:
    """Wait (at most ``timeout`` in all) for the workspace removals this process started. True when all ended."""
    deadline = time.monotonic() + timeout
    with _removals_lock:
        threads = list(_removals)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with _removals_lock:
        _removals[:] = [t for t in _removals if t.is_alive()]
        return not _removals
