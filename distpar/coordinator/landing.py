"""The end of a run that finished every unit: the ordered merge of the units into the integration branch, the
``--verify-merged`` gate on the merged tree, the landing into the target, ``--push``. Nothing here resolves a
conflict, and the target moves only when all of it went through."""

from __future__ import annotations

import atexit
import fcntl
import logging
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

from distpar.coordinator.journal import Journal
from distpar.coordinator.merge import land, merge_streams
from distpar.core.errors import DistparError
from distpar.infra import gitops, paths, workspace
from distpar.infra.transfer import push_run
from distpar.infra.workspace import workspace_ready

if TYPE_CHECKING:
    from distpar.coordinator.executor import Runner

log = logging.getLogger(__name__)


def land_run(run: Runner) -> str | None:
    """Merge every unit in plan order into the integration branch, gate it (--verify-merged), move the target,
    push (--push). Returns the target's new head, or None when a conflict or the gate stopped it."""
    order = [(run.branch(u.uid), run.results[u.uid].commit or run.start)
             for u in sorted(run.units, key=lambda u: u.order)]
    run.publish("merge_started", streams=[b for b, _ in order])
    # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
    # resolved by hand there); units it already contains are skipped by merge_streams.
    begin = gitops.try_rev(run.repo, f"refs/heads/{run.integration}")
    if begin is None or not gitops.is_ancestor(run.repo, run.start, begin):
        begin = run.start
    result = merge_streams(run.repo, begin, order, run.integration, run.run_id, run.env)
    if result.conflict is None and run.options.verify_merged:
        run.gate = _verify_merged(run, result.head)
        if run.gate is not None:
            return None
    conflict = result.conflict or land(run.repo, run.target, run.start, run.integration, result.head,
                                       run.env)
    if conflict:
        run.conflict = conflict
        run.journal.event(run.run_id, "conflict", stage=conflict.stage, files=list(conflict.files),
                           theirs=conflict.theirs, ours=conflict.ours)
        return None
    run.journal.event(run.run_id, "merged", head=result.head, merged=list(result.merged))
    if run.options.push:
        run.pushed = push_run(run.repo, run.options.push, [b for b, _ in order] + [run.integration],
                               run.target)
        run.journal.event(run.run_id, "pushed", remote=run.options.push, refs=run.pushed)
    return gitops.rev(run.repo, f"refs/heads/{run.target}")

def _verify_merged(run: Runner, head: str) -> workspace.HookResult | None:
    """The gate on the merged tree; its result when it failed (then the target is not touched)."""
    assert run.options.verify_merged
    run.emit("verify_merged_started", head=head)
    gate = workspace.verify_merged(run.repo, head, run.run_dir / "verify-merged", run.options.verify_merged,
                                   run.options.setup, run.include, run.run_dir / "logs" / "verify-merged.log")
    run.publish("verify_merged", ok=gate.ok, exit_code=gate.exit_code, seconds=round(gate.seconds, 3), head=head,
                tail=gate.tail[-2000:])  # the tail of the user's own command: its output, masked of nothing secret
    return None if gate.ok else gate


REMOVAL_WAIT = 120.0  # how long a process that is exiting waits for its runs' workspaces to be removed
REMOVING = ".removing"  # under the worktrees' base: workspaces being removed (or whose removal was cut short)
_removals: list[threading.Thread] = []
_removals_lock = threading.Lock()
_at_exit: list[object] = []  # the exit hook, once registered


def removal_root(repo: Path) -> Path:
    """Where workspaces wait to be removed: ``<worktrees base>/.removing/<run id>/...``."""
    return paths.worktrees_base(repo) / REMOVING


def cleanup(run: Runner) -> None:
    """Workspaces: their uncommitted work saved on a ref (never deleted unsaved), then moved aside and forgotten
    by git (one ``worktree prune``); their files are removed by a thread, journaled (``workspaces_removing``,
    ``workspaces_removed``), so the run's report does not wait for them. The process waits for the removal
    (at most ``REMOVAL_WAIT``) before it exits; ``distpar clean`` removes what an interrupted one left."""
    if not run.backend.remote:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="distpar-cleanup") as pool:
            found = list(pool.map(lambda w: _save(run, Path(run.backend.workspace(run._ctx_stub(), w))),
                                  range(run.workers)))
        run.saved_refs.extend(ref for _, ref in found if ref)
        _remove(run, [ws for ws, ref in found if ref is not None])
    run.transfer.clear()
    run.live.close()  # units that never handed a result back: their live copy is kept in their log


def _save(run: Runner, ws: Path) -> tuple[Path, str | None]:
    """Save ``ws``'s uncommitted work on a ref. The ref ("" when there was nothing to save), or None when it
    could not be saved or does not exist (then there is nothing to remove)."""
    return ws, _saved_on(run, ws) if ws.exists() else None


def _saved_on(run: Runner, ws: Path) -> str | None:
    try:
        # A workspace that was never fully checked out holds no agent's work (none ran in it).
        snap = gitops.snapshot(ws, "distpar: uncommitted work found at cleanup", run.env) \
            if workspace_ready(ws) and gitops.out(ws, "status", "--porcelain") else None
        if not snap:
            return ""
        ref = f"refs/distpar/{run.run_id}/saved/{ws.name}-cleanup"
        gitops.update_ref(run.repo, ref, snap)
        return ref
    except DistparError:
        log.exception("could not snapshot %s; leaving it in place", ws)
        return None


def _remove(run: Runner, workspaces: list[Path]) -> None:
    if not workspaces:
        paths.remove_worktrees_root(run.repo, run.run_id)
        return
    trash = removal_root(run.repo) / run.run_id / secrets.token_hex(4)
    trash.mkdir(parents=True)
    lock = open(trash.with_suffix(".lock"), "w")  # noqa: SIM115 - held until the files are gone (clean waits)
    fcntl.flock(lock, fcntl.LOCK_EX)
    moved: list[Path] = []
    with gitops.repo_lock(run.repo, "worktree"):  # prune must not see another run's half-made worktree
        left = []
        for ws in workspaces:
            try:
                ws.rename(trash / ws.name)
                moved.append(trash / ws.name)
            except OSError:  # another file system, say: git removes it now
                left.append(ws)
        gitops.git(run.repo, "worktree", "prune", check=False)
    gitops.worktree_remove(run.repo, *left)
    paths.remove_worktrees_root(run.repo, run.run_id)
    run.journal.event(run.run_id, "workspaces_removing", workspaces=[str(ws) for ws in workspaces],
                      moved_to=str(trash))
    journal_path = run.journal.path
    thread = threading.Thread(target=_remove_files, args=(run.run_id, trash, lock, journal_path, len(moved)),
                              name=f"distpar-remove-{run.run_id}", daemon=True)
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
