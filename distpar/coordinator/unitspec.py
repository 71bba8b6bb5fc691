"""What a unit is given (its agent, prompt, session to continue, the CAST fan-out answers it is handed) and
what its result must satisfy before it counts (CAST ``verify_files``). Read by the executor; no I/O of its own
beyond reading the unit's commits."""

from __future__ import annotations

import fnmatch
from dataclasses import fields, replace
from typing import TYPE_CHECKING

from distpar import agents
from distpar.core import names
from distpar.core.model import AgentConfig, UnitResult, UnitSpec, UnitStatus, WorkerOptions, WorkerSettings, totals
from distpar.core.units import with_fan_out_summary
from distpar.infra import gitops

if TYPE_CHECKING:
    from distpar.coordinator.executor import Runner


def _answer(run: Runner, uid: str) -> str:
    r = run.results.get(uid)
    return r.outcome.message if r is not None and r.outcome is not None else ""


def unit_agent(run: Runner, uid: str) -> AgentConfig:
    """The agent unit ``uid`` runs: its batch's override, else the run's."""
    u = run.graph.unit(uid)
    return agents.agent_config(u.agent, run.options.agent) if u.agent else run.options.agent


def unit_spec(run: Runner, uid: str, worker: int, attempt: int, base: str) -> UnitSpec:
    """What worker ``worker`` is sent to run unit ``uid`` (dispatch number ``run.dispatches``) from ``base``: its
    agent, its prompt (with the fan-out answers of the batch before it, for CAST ``type: fan-out``), and the
    session and saved work an interrupted unit goes on from (a session only where the agent can continue one)."""
    u = run.graph.unit(uid)
    cfg = unit_agent(run, uid)
    session, restore, node = run.resume_sessions.get(uid, (None, None, None))
    if session and not agents.can_resume(cfg):
        session = node = None
    prompt = u.prompt
    source = run.plan.fan_out_source(u.batch_id)
    if source:  # CAST fan-out: the agents' final answers are handed to the next batch's prompts
        answers = {s.uid: _answer(run, s.uid) for s in run.graph.of_batch(source)}
        prompt = with_fan_out_summary(prompt, source, answers, run.graph)
    return UnitSpec(
        uid=uid, description=u.description, prompt=prompt, agent=cfg, timeout=u.timeout or run.options.timeout,
        worker=worker, dispatch=run.dispatches, branch=run.branch(uid), base=base,
        source=run.transfer.source(base, f"{names.key(uid)}-{run.dispatches}",
                                   extra=(run.saved_ref(uid),) if restore else ()),
        attempt=attempt, session=session, restore=restore, node=node if run.backend.remote else None,
        subagent_type=u.subagent_type,
    )


def worker_settings(run: Runner, worker: int) -> WorkerSettings:
    """What worker ``worker`` is told once for the whole run (the same for each of its units)."""
    ctx = run._ctx_stub()
    o = run.options
    return WorkerSettings(
        run_id=run.run_id, workspace=run.backend.workspace(ctx, worker), log_dir=run.backend.log_dir(ctx),
        identity=run.identity, env=run.forwarded, return_bundle=run.transfer.return_bundle,
        include=tuple(run.include) if (not run.backend.remote or run.include_data) else (),
        include_data=run.include_data, plan_text=run.plan_text,
        options=WorkerOptions(**{f.name: getattr(o, f.name) for f in fields(WorkerOptions)}),
    )


def verify_files(run: Runner, r: UnitResult) -> UnitResult:
    """CAST ``verify_files``: once the last of a batch's final units is done, the files must exist (and not
    be empty) in the batch's work; else that unit fails, naming the missing paths (its work is kept)."""
    batch = run.batches[run.graph.unit(r.unit_id).batch_id]
    if not batch.verify_files or not r.status.ok:
        return r
    units = run.graph.of_batch(batch.id)
    inner = {d for u in units for d in u.depends_on}
    finals = [u.uid for u in units if u.uid not in inner]
    if any(f != r.unit_id and not (f in run.results and run.results[f].status.ok) for f in finals):
        return r
    commits = [r.commit if f == r.unit_id else run.results[f].commit for f in finals]

    def present(path: str) -> bool:
        return any(c and gitops.git(run.repo, "cat-file", "-s", f"{c}:{path}", check=False).stdout.strip()
                   not in ("", "0") for c in commits)

    missing = [p for p in batch.verify_files if not present(p)]
    if not missing:
        return r
    return replace(r, status=UnitStatus.FAILED,
                   error=f"verify_files: batch {batch.id} left no {', '.join(missing)} (its work is kept on "
                         f"{run.branch(r.unit_id)})")


def with_earlier_tries(earlier: list[UnitResult], r: UnitResult) -> UnitResult:
    """``r`` with what the unit's earlier, rate-limited dispatches tried and cost (every try counts)."""
    outcomes = [x.outcome for x in (*earlier, r) if x.outcome is not None]
    return replace(r, outcome=totals(outcomes) if outcomes else None, tries=sum(x.tries for x in (*earlier, r)),
                   try_classes=tuple(c for x in (*earlier, r) for c in x.try_classes),
                   started=earlier[0].started or r.started)


def note_owned_files(run: Runner, r: UnitResult, base: str) -> UnitResult:
    """CAST ``owns_files``: a unit that changed files another unit owns (and it does not) is reported, in the
    result's notes (and so in the journal and at the end of the run); its work is kept as it is."""
    owners = [(u.uid, u.owns_files) for u in run.graph.units if u.owns_files and u.uid != r.unit_id]
    if not owners or not r.status.ok or not r.commit or not r.changed:
        return r
    mine = run.graph.unit(r.unit_id).owns_files
    changed = gitops.out(run.repo, "diff", "--name-only", base, r.commit).splitlines()
    crossed = []
    for uid, owned in owners:
        files = [f for f in changed if _owned(f, owned) and not _owned(f, mine)]
        if files:
            crossed.append(f"edited {', '.join(files[:5])} that unit {uid} owns (owns_files)")
    return replace(r, notes=(*r.notes, *crossed)) if crossed else r


def _owned(path: str, patterns: tuple[str, ...]) -> bool:
    return any(path == p or fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)
