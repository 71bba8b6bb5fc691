"""The end of a run that finished every unit: the ordered merge of the units into the integration branch, the
``--verify-merged`` gate on the merged tree, the landing into the target, ``--push``. Nothing here resolves a
conflict, and the target moves only when all of it went through."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from distpar.coordinator.merge import Conflict, land, merge_branches
from distpar.coordinator.options import RunOptions
from distpar.coordinator.site import RunEvents, RunSite
from distpar.infra import gitops, workspace
from distpar.infra.transfer import push_run

log = logging.getLogger(__name__)


@dataclass
class Landed:
    """How the landing went: the target's new head, or what stopped it (a conflict, the gate)."""

    head: str | None = None
    conflict: Conflict | None = None
    gate: workspace.HookResult | None = None
    pushed: list[str] = field(default_factory=list)


def land_run(site: RunSite, options: RunOptions, merges: list[tuple[str, str]], include: list[str],
             events: RunEvents) -> Landed:
    """Merge ``merges`` (each unit's branch and commit, in plan order) into the integration branch, gate it
    (--verify-merged), move the target, push (--push)."""
    events.publish("merge_started", branches=[b for b, _ in merges])
    # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
    # resolved by hand there); units it already contains are skipped by merge_branches.
    begin = gitops.try_rev(site.repo, f"refs/heads/{site.integration}")
    if begin is None or not gitops.is_ancestor(site.repo, site.start, begin):
        begin = site.start
    result = merge_branches(site.repo, begin, merges, site.integration, site.run_id, site.env)
    if result.conflict is None and options.verify_merged:
        gate = _verify_merged(site, options, include, result.head, events)
        if gate is not None:
            return Landed(gate=gate)
    # Moving the target is the one step in the user's repository that runs its hooks, and only with --hooks.
    env = gitops.hooks_env(site.env, True) if options.hooks else site.env
    conflict = result.conflict or land(site.repo, site.target, site.start, site.integration, result.head, env)
    if conflict:
        events.record("conflict", stage=conflict.stage, files=list(conflict.files), theirs=conflict.theirs,
                      ours=conflict.ours)
        return Landed(conflict=conflict)
    events.record("merged", head=result.head, merged=list(result.merged))
    pushed: list[str] = []
    if options.push:
        pushed = push_run(site.repo, options.push, [b for b, _ in merges] + [site.integration], site.target)
        events.record("pushed", remote=options.push, refs=pushed)
    return Landed(head=gitops.rev(site.repo, f"refs/heads/{site.target}"), pushed=pushed)


def _verify_merged(site: RunSite, options: RunOptions, include: list[str], head: str,
                   events: RunEvents) -> workspace.HookResult | None:
    """The gate on the merged tree; its result when it failed (then the target is not touched)."""
    assert options.verify_merged
    events.emit("verify_merged_started", head=head)
    gate = workspace.verify_merged(site.repo, head, site.run_dir / "verify-merged", options.verify_merged,
                                   options.setup, include, site.run_dir / "logs" / "verify-merged.log")
    events.publish("verify_merged", ok=gate.ok, exit_code=gate.exit_code, seconds=round(gate.seconds, 3), head=head,
                   tail=gate.tail[-2000:])  # the tail of the user's own command: its output, masked of nothing secret
    return None if gate.ok else gate


def release(site: RunSite, branches: list[str]) -> None:
    """After a clean landing: the run's branches and refs go (its saved work stays)."""
    for i in range(0, len(branches), 500):  # one git process per 500 branches, not one per branch
        gitops.git(site.repo, "branch", "-D", "--quiet", *branches[i:i + 500], check=False)
    for ref in gitops.refs(site.repo, f"refs/distpar/{site.run_id}/"):
        if "/saved/" not in ref:
            gitops.delete_ref(site.repo, ref)
