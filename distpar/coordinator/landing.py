"""The end of a run that finished every unit: the ordered merge of the units into the integration branch, the
``--verify-merged`` gate on the merged tree, the landing into the target, ``--push``. Nothing here resolves a
conflict, and the target moves only when all of it went through."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from distpar.coordinator.bisect import Bisected, Stopped, bisect, each_merge, merge_sequence
from distpar.coordinator.merge import Conflict, land, merge_branches
from distpar.coordinator.options import RunOptions
from distpar.coordinator.site import RunEvents, RunSite
from distpar.core.errors import DistparError
from distpar.infra import gitops, paths, workspace
from distpar.infra.transfer import push_run
from distpar.infra.workspace import workspace_ready

log = logging.getLogger(__name__)


@dataclass
class Landed:
    """How the landing went: the target's new head, or what stopped it (a conflict, the gate)."""

    head: str | None = None
    conflict: Conflict | None = None
    gate: workspace.HookResult | None = None
    bisected: Bisected | None = None  # when the gate failed: the first unit whose merge makes the check fail
    review: str | None = None  # --review: the integrated, gated head waiting for ``distpar land``
    fixes: list[dict[str, object]] = field(default_factory=list)  # --on-verify-fail fix: each fix unit's end
    pushed: list[str] = field(default_factory=list)


# --on-verify-fail fix: (the failing head, the fix unit's prompt, its number) -> (its commit or None, its end)
Fixer = Callable[[str, str, int], tuple[str | None, dict[str, object]]]


def land_run(site: RunSite, options: RunOptions, merges: list[tuple[str, str]], include: list[str],
             events: RunEvents, fixer: Fixer | None = None, stop: threading.Event | None = None) -> Landed:
    """Merge ``merges`` (each unit's branch and commit, in plan order) into the integration branch, gate it
    (--verify-merged), move the target, push (--push)."""
    events.publish("merge_started", branches=[b for b, _ in merges])
    # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
    # resolved by hand there); units it already contains are skipped by merge_branches.
    begin = gitops.try_rev(site.repo, f"refs/heads/{site.integration}")
    if begin is None or not gitops.is_ancestor(site.repo, site.start, begin):
        begin = site.start
    result = merge_branches(site.repo, begin, through_dependents(site.repo, merges), site.integration, site.run_id,
                            site.env)
    fixes: list[dict[str, object]] = []
    if result.conflict is None and options.verify_merged:
        gate, bisected = verify_merged_gate(site, options, include, result.head, events, stop)
        while gate is not None and fixer is not None and options.on_verify_fail == "fix" \
                and len(fixes) < options.max_fixes and not (stop is not None and stop.is_set()):
            fixed, end = fixer(result.head, fix_prompt(options.verify_merged, gate, bisected), len(fixes) + 1)
            fixes.append(end)
            if fixed is None:
                break
            gitops.update_ref(site.repo, f"refs/heads/{site.integration}", fixed)  # a commit on top of the head
            result = dataclasses.replace(result, head=fixed)
            gate, bisected = verify_merged_gate(site, options, include, result.head, events, stop)
        if gate is not None:
            return Landed(gate=gate, bisected=bisected, fixes=fixes)
    if result.conflict is None and options.review:
        events.publish("review_ready", head=result.head, merged=list(result.merged))
        return Landed(review=result.head, fixes=fixes)
    conflict = result.conflict or land(site.repo, site.target, site.start, site.integration, result.head, site.env)
    if conflict:
        events.record("conflict", stage=conflict.stage, files=list(conflict.files), theirs=conflict.theirs,
                      ours=conflict.ours)
        return Landed(conflict=conflict)
    events.record("merged", head=result.head, merged=list(result.merged))
    pushed: list[str] = []
    if options.push:
        pushed = push_run(site.repo, options.push, [b for b, _ in merges] + [site.integration], site.target)
        events.record("pushed", remote=options.push, refs=pushed)
    return Landed(head=gitops.rev(site.repo, f"refs/heads/{site.target}"), pushed=pushed, fixes=fixes)


def fix_prompt(command: str, gate: workspace.HookResult, bisected: Bisected | None) -> str:
    """What a fix unit is asked: make the merged tree pass the check, with the check's output."""
    where = f"\n{bisected.describe()}." if bisected is not None else ""
    return (f"The merged result of several units' work fails its check. The check (run from the repository's "
            f"root): {command}\nIt ended with exit {gate.exit_code}.{where}\nThe end of its output:\n\n"
            f"{gate.tail}\n\nChange the code so that the check passes, keeping every unit's work; do not change "
            f"the check itself.\n")


def through_dependents(repo: Path, merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``merges`` without the units whose work a later unit's branch already holds (its dependencies): they come
    in through it, merged the way its base merged them, a conflict between them resolved there included (by hand,
    on the unit's branch, as a dependency conflict prints) instead of met again."""
    tips = list(dict.fromkeys(t for _, t in merges))
    if len(tips) < 2:
        return merges
    keep = set(gitops.git(repo, "merge-base", "--independent", *tips).stdout.split())
    return [(b, t) for b, t in merges if t in keep]


def verify_merged_gate(site: RunSite, options: RunOptions, include: list[str], head: str, events: RunEvents,
                       stop: threading.Event | None = None) -> tuple[workspace.HookResult | None, Bisected | None]:
    """The gate on the merged tree: its result when it failed (then the target is not touched), with the first unit
    whose merge makes it fail (bisected; or, with --verify-each-merge, found checking every merge in order).
    ``stop`` set (an interrupt while landing) ends the search for that unit, not the gate: its failure stands and
    ``resume`` runs the gate, and the search, again."""
    assert options.verify_merged
    command = options.verify_merged
    events.emit("verify_merged_started", head=head)

    def check(commit: str, step: int) -> workspace.HookResult:
        if stop is not None and stop.is_set():
            raise Stopped()
        events.emit("verify_bisect_step", commit=commit, step=step)
        r = workspace.verify_merged(site.repo, commit, site.run_dir / "verify-merged", command, options.setup,
                                    include, site.run_dir / "logs" / f"verify-merged-{step}-{commit[:12]}.log", stop)
        if stop is not None and stop.is_set():
            raise Stopped()
        return r

    if options.verify_each_merge:
        seq = merge_sequence(site.repo, site.start, head)
        try:
            last, found = each_merge(seq, check)
            gate = last if last is not None else check(head, 1)
        except Stopped:
            events.publish("verify_bisect_stopped", head=head)
            return workspace.HookResult("verify-merged (interrupted)", False, None, 0.0, "interrupted"), None
    else:
        gate = workspace.verify_merged(site.repo, head, site.run_dir / "verify-merged", command, options.setup,
                                       include, site.run_dir / "logs" / "verify-merged.log")
        found = None
    events.publish("verify_merged", ok=gate.ok, exit_code=gate.exit_code, seconds=round(gate.seconds, 3), head=head,
                   tail=gate.tail[-2000:])  # the tail of the user's own command: its output, masked of nothing secret
    if gate.ok:
        return None, None
    if found is None:
        seq = merge_sequence(site.repo, site.start, head)
        if seq:
            try:
                found = bisect(seq, check, gate, site.start)
            except Stopped:
                events.publish("verify_bisect_stopped", head=head)
    if found is not None:
        events.publish("verify_bisected", unit=found.unit, **{k: v for k, v in found.to_dict().items()
                                                              if k not in ("unit", "tail")},
                       tail=found.tail[-2000:], description=found.describe())
    return gate, found


def cleanup(site: RunSite, workspaces: list[Path]) -> list[str]:
    """Remove the local workers' worktrees ``workspaces`` (what is uncommitted in one is saved on a ref first;
    never deletes unsaved work). Returns the refs it saved work on."""
    saved, done = [], []
    for w, ws in enumerate(workspaces):
        if not ws.exists():
            continue
        try:
            # A workspace that was never fully checked out holds no agent's work (none ran in it).
            snap = gitops.snapshot(ws, "distpar: uncommitted work found at cleanup", site.env) \
                if workspace_ready(ws) and gitops.out(ws, "status", "--porcelain") else None
            if snap:
                ref = f"refs/distpar/{site.run_id}/saved/w{w + 1}-cleanup"
                gitops.update_ref(site.repo, ref, snap)
                saved.append(ref)
        except DistparError:
            log.exception("could not snapshot %s; leaving it in place", ws)
            continue
        done.append(ws)
    gitops.worktree_remove(site.repo, *done)
    paths.remove_worktrees_root(site.repo, site.run_id)
    return saved


def release(site: RunSite, branches: list[str]) -> None:
    """After a clean landing: the run's branches and refs go (its saved work stays)."""
    for b in branches:
        gitops.git(site.repo, "branch", "-D", "--quiet", b, check=False)
    for ref in gitops.refs(site.repo, f"refs/distpar/{site.run_id}/"):
        if "/saved/" not in ref:
            gitops.delete_ref(site.repo, ref)
