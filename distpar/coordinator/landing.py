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

from distpar.coordinator import resolve
from distpar.coordinator.bisect import Bisected, Stopped, bisect, each_merge, merge_sequence
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
    bisected: Bisected | None = None  # when the gate failed: the first unit whose merge makes the check fail
    review: str | None = None  # --review: the integrated, gated head waiting for ``distpar land``
    fixes: list[dict[str, object]] = field(default_factory=list)  # --on-verify-fail fix: each fix unit's end
    pushed: list[str] = field(default_factory=list)
    resolutions: list[dict[str, object]] = field(default_factory=list)  # --on-conflict resolve: each one tried
    interrupted: bool = False  # Ctrl+C stopped a resolution: nothing landed, the run resumes from the merge

# (integration head, the conflicting unit branch, its files) -> the two sides the resolver is told of
Sides = Callable[[str, str, tuple[str, ...]], tuple[resolve.Side, resolve.Side]]


# --on-verify-fail fix: (the failing head, the fix unit's prompt, its number) -> (its commit or None, its end)
Fixer = Callable[[str, str, int], tuple[str | None, dict[str, object]]]


def land_run(site: RunSite, options: RunOptions, merges: list[tuple[str, str]], include: list[str],
             events: RunEvents, sides: Sides | None = None, fixer: Fixer | None = None,
             stop: threading.Event | None = None) -> Landed:
    """Merge ``merges`` (each unit's branch and commit, in plan order) into the integration branch (with
    ``--on-conflict resolve``: each conflicting merge handed to the agent, ``sides`` telling it both sides), gate it
    (--verify-merged: bisected when it fails; with ``--on-verify-fail fix``, ``fixer`` runs fix units), stop for
    review (--review), move the target, push (--push). ``stop``: an interrupt (a resolution or a check under way
    stops; nothing lands)."""
    events.publish("merge_started", branches=[b for b, _ in merges])
    # A resumed run continues from what the integration branch already holds (e.g. a conflict the user
    # resolved by hand there); units it already contains are skipped by merge_branches.
    begin = gitops.try_rev(site.repo, f"refs/heads/{site.integration}")
    if begin is None or not gitops.is_ancestor(site.repo, site.start, begin):
        begin = site.start
    ordered = through_dependents(site.repo, merges)
    result = merge_branches(site.repo, begin, ordered, site.integration, site.run_id, site.env)
    resolutions: list[dict[str, object]] = []
    while result.conflict is not None and options.on_conflict == "resolve" and sides is not None \
            and result.conflict.stage == "integration":  # each conflicting merge to the agent, in plan order
        c = result.conflict
        tip = dict(merges)[c.theirs]
        ours, theirs = sides(result.head, c.theirs, c.files)
        events.publish("resolve_started", units=[*ours.units, *theirs.units], files=list(c.files))
        res = resolve.resolve(site, options, c, result.head, tip, ours, theirs, len(resolutions) + 1, include,
                              stop)
        resolutions.append(res.to_dict())
        if res.cost_usd and theirs.units:  # the resolution's cost counts, as the merged unit's
            events.journal.add_cost(site.run_id, theirs.units[0], res.cost_usd)
        if stop is not None and stop.is_set():
            events.publish("resolve_interrupted", files=list(c.files), theirs=c.theirs)
            return Landed(resolutions=resolutions, interrupted=True)
        events.publish("conflict_resolved" if res.ok else "resolve_failed", **res.to_dict())
        if not res.ok:
            why = f"the agent's resolution did not land: {res.why}"
            failed = Conflict(c.stage, c.ours, c.theirs, c.files, c.unit_id,
                              (f"# {res.why}" + (f"; the resolution is kept on {res.ref}" if res.ref else ""),
                               *c.commands))
            events.record("conflict", stage=c.stage, files=list(c.files), theirs=c.theirs, ours=c.ours,
                          resolve_failed=why)
            return Landed(conflict=failed, gate=res.gate, resolutions=resolutions)
        assert res.commit is not None
        gitops.update_ref(site.repo, f"refs/heads/{site.integration}", res.commit)
        merged_before = (*result.merged, c.theirs)
        result = merge_branches(site.repo, res.commit, ordered, site.integration, site.run_id, site.env)
        result = dataclasses.replace(result, merged=merged_before + result.merged)
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
            return Landed(gate=gate, bisected=bisected, fixes=fixes, resolutions=resolutions)
    if result.conflict is None and options.review:
        events.publish("review_ready", head=result.head, merged=list(result.merged))
        return Landed(review=result.head, fixes=fixes, resolutions=resolutions)
    # Moving the target is the one step in the user's repository that runs its hooks, and only with --hooks.
    env = gitops.hooks_env(site.env, True) if options.hooks else site.env
    conflict = result.conflict or land(site.repo, site.target, site.start, site.integration, result.head, env)
    if conflict:
        events.record("conflict", stage=conflict.stage, files=list(conflict.files), theirs=conflict.theirs,
                      ours=conflict.ours)
        return Landed(conflict=conflict, resolutions=resolutions)
    events.record("merged", head=result.head, merged=list(result.merged))
    pushed: list[str] = []
    if options.push:
        pushed = push_run(site.repo, options.push, [b for b, _ in merges] + [site.integration], site.target)
        events.record("pushed", remote=options.push, refs=pushed)
    return Landed(head=gitops.rev(site.repo, f"refs/heads/{site.target}"), pushed=pushed, fixes=fixes,
                  resolutions=resolutions)


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


def release(site: RunSite, branches: list[str]) -> None:
    """After a clean landing: the run's branches and refs go (its saved work stays)."""
    for i in range(0, len(branches), 500):  # one git process per 500 branches, not one per branch
        gitops.git(site.repo, "branch", "-D", "--quiet", *branches[i:i + 500], check=False)
    for ref in gitops.refs(site.repo, f"refs/distpar/{site.run_id}/"):
        if "/saved/" not in ref:
            gitops.delete_ref(site.repo, ref)
