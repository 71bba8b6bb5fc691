"""The end of a run that finished every unit: the ordered merge of the units into the integration branch, the
``--verify-merged`` gate on the merged tree, the landing into the target, ``--push``. Nothing here resolves a
conflict, and the target moves only when all of it went through."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from distpar.coordinator import resolve
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
    resolutions: list[dict[str, object]] = field(default_factory=list)  # --on-conflict resolve: each one tried
    interrupted: bool = False  # Ctrl+C stopped a resolution: nothing landed, the run resumes from the merge

# (integration head, the conflicting unit branch, its files) -> the two sides the resolver is told of
Sides = Callable[[str, str, tuple[str, ...]], tuple[resolve.Side, resolve.Side]]


def land_run(site: RunSite, options: RunOptions, merges: list[tuple[str, str]], include: list[str],
             events: RunEvents, sides: Sides | None = None, cancel: threading.Event | None = None) -> Landed:
    """Merge ``merges`` (each unit's branch and commit, in plan order) into the integration branch, gate it
    (--verify-merged), move the target, push (--push)."""
    events.publish("merge_started", branches=[b for b, _ in merges])
    # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
    # resolved by hand there); units it already contains are skipped by merge_branches.
    begin = gitops.try_rev(site.repo, f"refs/heads/{site.integration}")
    if begin is None or not gitops.is_ancestor(site.repo, site.start, begin):
        begin = site.start
    result = merge_branches(site.repo, begin, merges, site.integration, site.run_id, site.env)
    resolutions: list[dict[str, object]] = []
    while result.conflict is not None and options.on_conflict == "resolve" and sides is not None \
            and result.conflict.stage == "integration":  # each conflicting merge to the agent, in plan order
        c = result.conflict
        tip = dict(merges)[c.theirs]
        ours, theirs = sides(result.head, c.theirs, c.files)
        events.publish("resolve_started", units=[*ours.units, *theirs.units], files=list(c.files))
        res = resolve.resolve(site, options, c, result.head, tip, ours, theirs, len(resolutions) + 1, include,
                              cancel)
        resolutions.append(res.to_dict())
        if res.cost_usd and theirs.units:  # the resolution's cost counts, as the merged unit's
            events.journal.add_cost(site.run_id, theirs.units[0], res.cost_usd)
        if cancel is not None and cancel.is_set():
            events.publish("resolve_interrupted", files=list(c.files), theirs=c.theirs)
            return Landed(resolutions=resolutions, interrupted=True)
        events.publish("conflict_resolved" if res.ok else "resolve_failed", **res.to_dict())
        if not res.ok:
            why = (f"the agent's resolution did not land: {res.why}",)
            failed = Conflict(c.stage, c.ours, c.theirs, c.files, c.unit_id,
                              (f"# {res.why}" + (f"; the resolution is kept on {res.ref}" if res.ref else ""),
                               *c.commands))
            events.record("conflict", stage=c.stage, files=list(c.files), theirs=c.theirs, ours=c.ours,
                          resolve_failed=why[0])
            return Landed(conflict=failed, gate=res.gate, resolutions=resolutions)
        assert res.commit is not None
        gitops.update_ref(site.repo, f"refs/heads/{site.integration}", res.commit)
        merged_before = (*result.merged, c.theirs)
        result = merge_branches(site.repo, res.commit, merges, site.integration, site.run_id, site.env)
        result = type(result)(result.head, merged_before + result.merged, result.conflict)
    if result.conflict is None and options.verify_merged:
        gate = _verify_merged(site, options, include, result.head, events)
        if gate is not None:
            return Landed(gate=gate, resolutions=resolutions)
    conflict = result.conflict or land(site.repo, site.target, site.start, site.integration, result.head, site.env)
    if conflict:
        events.record("conflict", stage=conflict.stage, files=list(conflict.files), theirs=conflict.theirs,
                      ours=conflict.ours)
        return Landed(conflict=conflict, resolutions=resolutions)
    events.record("merged", head=result.head, merged=list(result.merged))
    pushed: list[str] = []
    if options.push:
        pushed = push_run(site.repo, options.push, [b for b, _ in merges] + [site.integration], site.target)
        events.record("pushed", remote=options.push, refs=pushed)
    return Landed(head=gitops.rev(site.repo, f"refs/heads/{site.target}"), pushed=pushed, resolutions=resolutions)


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
