"""Review before landing: a run with ``--review`` stops after the gates with everything integrated on its
integration branch and the target untouched (state ``review``). ``diff`` shows a unit's work against its base, or
the integrated result against the run's start; ``land_reviewed`` lands it (the gate again on the target merged in,
if the target moved), or lands it without some units: those and every unit that depends on them are left out
(their work kept on saved refs), the rest merged again in plan order and gated again. The target moves only after
the gates; what was reviewed stays on a ref."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distpar.coordinator import options as run_options
from distpar.coordinator.journal import Journal
from distpar.coordinator.landing import Bisected, release, through_dependents, verify_merged_gate
from distpar.coordinator.merge import Conflict, land, merge_branches
from distpar.coordinator.runtime import RunLock, git_identity
from distpar.coordinator.site import Observer, RunEvents, RunSite
from distpar.core import names
from distpar.core.errors import ExitCode, UsageError
from distpar.core.plan import Plan
from distpar.core.schedule import Schedule
from distpar.core.stateunits import state_units
from distpar.core.units import unit_graph
from distpar.infra import gitops, workspace
from distpar.infra.paths import state_dir
from distpar.infra.transfer import push_run


@dataclass
class Reviewed:
    """A run waiting for review: where it is and its units (plan order) with their dependencies and commits."""

    site: RunSite
    run: dict[str, Any]
    options: run_options.RunOptions
    order: list[str]
    deps: dict[str, tuple[str, ...]]
    commits: dict[str, str | None]

    def unit_base(self, journal: Journal, uid: str) -> str:
        """The base a unit ran from (its last dispatch's, as journaled)."""
        bases = [e.data.get("base") for e in journal.events(self.site.run_id)
                 if e.kind == "unit_submitted" and e.unit_id == uid and e.data.get("base")]
        return str(bases[-1]) if bases else self.site.start

    def dependents(self, left_out: list[str]) -> list[str]:
        """Every unit that depends, directly or not, on one of ``left_out`` (plan order), not those themselves."""
        out: set[str] = set(left_out)
        for uid in self.order:  # plan order: a unit's dependencies come before it
            if uid not in out and any(d in out for d in self.deps.get(uid, ())):
                out.add(uid)
        return [u for u in self.order if u in out and u not in left_out]


def open_review(repo: Path, journal: Journal, run_id: str, *, states: tuple[str, ...] = ("review",)) -> Reviewed:
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    if run["state"] not in states:
        raise UsageError(f"run {run['id']} is {run['state']}, not waiting for review",
                         hint="a run stops for review with --review")
    options = run_options.from_row(json.loads(run["options"]))
    plan = Plan.from_dict(json.loads(run["plan"]))
    schedule = Schedule.from_dict(json.loads(run["schedule"]))
    graph = unit_graph(plan, independent=options.independent, strategy=schedule.strategy, split=options.split)
    units = sorted(state_units(graph, schedule.strategy, int(run["workers"] or 1)), key=lambda u: u.order)
    rows = {r["unit_id"]: r for r in journal.units(run["id"])}
    site = RunSite(repo, run["id"], state_dir(repo) / "runs" / run["id"], run["base"], run["target"],
                   git_identity(repo).env())
    return Reviewed(site, run, options, [u.uid for u in units], {u.uid: u.deps for u in units},
                    {u.uid: (rows.get(u.uid) or {}).get("commit_oid") for u in units})


def diff(repo: Path, journal: Journal, run_id: str, unit: str | None, stat: bool = False) -> str:
    """``git diff`` of unit ``unit``'s work against its base, or (no unit) of the integrated result against the
    run's start."""
    rv = open_review(repo, journal, run_id, states=("review", "gate_failed", "conflict", "failed", "ok"))
    args = ["diff", "--stat"] if stat else ["diff"]
    if unit is None:
        head = gitops.try_rev(repo, f"refs/heads/{rv.site.integration}")
        if head is None:
            raise UsageError(f"run {rv.site.run_id} has no integration branch (landed and released, or not merged)")
        return gitops.git(repo, *args, rv.site.start, head).stdout
    if unit not in rv.order:
        raise UsageError(f"run {rv.site.run_id} has no unit {unit!r} (units: {', '.join(rv.order)})")
    commit = rv.commits.get(unit)
    if not commit:
        raise UsageError(f"unit {unit} of run {rv.site.run_id} has no commit (it changed nothing, or never ended)")
    return gitops.git(repo, *args, rv.unit_base(journal, unit), commit).stdout


@dataclass
class LandResult:
    exit_code: ExitCode
    target: str
    landed: str | None = None
    left_out: list[str] = field(default_factory=list)  # asked for, and their dependents
    dependents: list[str] = field(default_factory=list)  # the dependents among them
    conflict: Conflict | None = None
    gate: workspace.HookResult | None = None
    bisected: Bisected | None = None
    gated: bool = False  # the gate ran again
    pushed: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)  # where the left-out units' work and the reviewed head stay


def land_reviewed(repo: Path, journal: Journal, run_id: str, without: tuple[str, ...] = (),
                  observer: Observer | None = None) -> LandResult:
    rv = open_review(repo, journal, run_id)
    site = rv.site
    unknown = [u for u in without if u not in rv.order]
    if unknown:
        raise UsageError(f"run {site.run_id} has no unit {', '.join(map(repr, unknown))} "
                         f"(units: {', '.join(rv.order)})")
    lock = RunLock(site.run_dir, site.run_id).acquire()
    try:
        return _land(repo, journal, rv, list(dict.fromkeys(without)), RunEvents(journal, site.run_id, observer))
    finally:
        lock.release()


def _land(repo: Path, journal: Journal, rv: Reviewed, without: list[str], events: RunEvents) -> LandResult:
    site, options = rv.site, rv.options
    head = gitops.rev(repo, f"refs/heads/{site.integration}")
    reviewed_ref = f"refs/distpar/{site.run_id}/saved/reviewed"
    gitops.update_ref(repo, reviewed_ref, head)  # what was reviewed stays, whatever lands
    res = LandResult(ExitCode.OK, site.target, saved=[reviewed_ref])
    dependents = rv.dependents(without)
    left = [*without, *dependents]
    res.left_out, res.dependents = [u for u in rv.order if u in left], dependents
    changed = bool(without)
    if without:
        for uid in res.left_out:
            commit = rv.commits.get(uid)
            if commit:
                ref = f"refs/distpar/{site.run_id}/saved/{names.key(uid)}-left-out"
                gitops.update_ref(repo, ref, commit)
                res.saved.append(ref)
        merges = [(site.branch(u), rv.commits[u] or site.start) for u in rv.order if u not in left]
        events.publish("land_without", left_out=res.left_out, dependents=dependents)
        result = merge_branches(repo, site.start, through_dependents(repo, merges), site.integration, site.run_id,
                                site.env)
        if result.conflict is not None:
            res.conflict, res.exit_code = result.conflict, ExitCode.CONFLICT
            events.record("conflict", stage=result.conflict.stage, files=list(result.conflict.files),
                          theirs=result.conflict.theirs, ours=result.conflict.ours)
            return _end(journal, rv, res)
        head = result.head
    current = gitops.rev(repo, f"refs/heads/{site.target}")
    if current != site.start and not gitops.is_ancestor(repo, current, head):
        # The target moved since the run started: the result to gate is the target with the work merged in.
        outcome = gitops.merge_commit(repo, current, head, f"distpar: merge {site.integration} into "
                                      f"{site.target}\n\nDistpar-Run: {site.run_id}\n", site.env)
        if outcome.commit is None:
            res.conflict = Conflict("target", site.target, site.integration, outcome.conflicts, None,
                                    (f"git switch {site.target}", f"git merge --no-ff {site.integration}"))
            res.exit_code = ExitCode.CONFLICT
            return _end(journal, rv, res)
        head = outcome.commit
        gitops.update_ref(repo, f"refs/heads/{site.integration}", head)
        changed = True
    if changed and options.verify_merged:
        res.gated = True
        res.gate, res.bisected = verify_merged_gate(site, options, workspace.included_files(repo), head, events)
        if res.gate is not None:
            res.exit_code = ExitCode.GATE_FAILED
            return _end(journal, rv, res)
    conflict = land(repo, site.target, current, site.integration, head, site.env)
    if conflict is not None:
        res.conflict, res.exit_code = conflict, ExitCode.CONFLICT
        return _end(journal, rv, res)
    res.landed = gitops.rev(repo, f"refs/heads/{site.target}")
    events.record("merged", head=head, left_out=res.left_out)
    if options.push:
        res.pushed = push_run(repo, options.push, [site.branch(u) for u in rv.order] + [site.integration],
                              site.target)
        events.record("pushed", remote=options.push, refs=res.pushed)
    if not options.keep_branches:
        release(site, [site.branch(u) for u in rv.order] + [site.integration])
    return _end(journal, rv, res)


def _end(journal: Journal, rv: Reviewed, res: LandResult) -> LandResult:
    """Journal how the landing ended: landed (ok), or still waiting for review (a conflict or a failed gate leaves
    the run in review: fix and land again)."""
    summary = json.loads(rv.run["summary"] or "{}")
    summary.update(landed=res.landed, left_out=res.left_out, review=None if res.landed else summary.get("review"),
                   gate=res.gate.to_dict() if res.gate else None,
                   bisected=res.bisected.to_dict() if res.bisected else None,
                   conflict=res.conflict.to_dict() if res.conflict else None)
    state = "ok" if res.landed else "review"
    summary.update(state=state, exit_code=int(res.exit_code))
    journal.end_run(rv.site.run_id, state, int(res.exit_code), summary)
    return res
