"""The end of a run that finished every unit: the ordered merge of the units into the integration branch, the
``--verify-merged`` gate on the merged tree, the landing into the target, ``--push``. Nothing here resolves a
conflict, and the target moves only when all of it went through."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from distpar.coordinator.merge import land, merge_branches
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
    run.publish("merge_started", branches=[b for b, _ in order])
    # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
    # resolved by hand there); units it already contains are skipped by merge_branches.
    begin = gitops.try_rev(run.repo, f"refs/heads/{run.integration}")
    if begin is None or not gitops.is_ancestor(run.repo, run.start, begin):
        begin = run.start
    result = merge_branches(run.repo, begin, order, run.integration, run.run_id, run.env)
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


def cleanup(run: Runner) -> None:
    """Remove worktrees (their work is committed or saved on a ref first). Never deletes unsaved work."""
    if not run.backend.remote:
        done = []
        for w in range(run.workers):
            ws = Path(run.backend.workspace(run._ctx_stub(), w))
            if not ws.exists():
                continue
            try:
                # A workspace that was never fully checked out holds no agent's work (none ran in it).
                snap = gitops.snapshot(ws, "distpar: uncommitted work found at cleanup", run.env) \
                    if workspace_ready(ws) and gitops.out(ws, "status", "--porcelain") else None
                if snap:
                    ref = f"refs/distpar/{run.run_id}/saved/w{w + 1}-cleanup"
                    gitops.update_ref(run.repo, ref, snap)
                    run.saved_refs.append(ref)
            except DistparError:
                log.exception("could not snapshot %s; leaving it in place", ws)
                continue
            done.append(ws)
        gitops.worktree_remove(run.repo, *done)
        paths.remove_worktrees_root(run.repo, run.run_id)
    run.transfer.clear()
    run.live.close()  # units that never handed a result back: their live copy is kept in their log
