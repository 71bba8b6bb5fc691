"""What a unit is given (its agent, prompt, session to continue, the CAST fan-out answers it is handed) and
what its result must satisfy before it counts (CAST ``verify_files``). Read by the executor; no I/O of its own
beyond reading the unit's commits."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from distpar import agents
from distpar.core.model import AgentConfig, UnitResult, UnitStatus, totals
from distpar.core.plan import Batch, Plan
from distpar.core.units import UnitGraph, with_fan_out_summary
from distpar.infra import gitops


def unit_agent(graph: UnitGraph, default: AgentConfig, uid: str) -> AgentConfig:
    """The agent unit ``uid`` runs: its batch's override, else the run's."""
    u = graph.unit(uid)
    return agents.agent_config(u.agent, default) if u.agent else default


def unit_prompt(graph: UnitGraph, plan: Plan, uid: str, results: Mapping[str, UnitResult]) -> str:
    """Unit ``uid``'s prompt, with the fan-out answers of the batch before it (CAST ``type: fan-out``: the agents'
    final answers, from ``results``, are handed to the next batch's prompts)."""
    u = graph.unit(uid)
    source = plan.fan_out_source(u.batch_id)
    if not source:
        return u.prompt
    answers = {s.uid: _answer(results, s.uid) for s in graph.of_batch(source)}
    return with_fan_out_summary(u.prompt, source, answers, graph)


def continued_session(cfg: AgentConfig, session: tuple[str | None, str | None, str | None] | None,
                      remote: bool) -> tuple[str | None, str | None, str | None]:
    """(agent session, saved work, node) an interrupted unit goes on from: a session only where the agent can
    continue one, and a node only where the workers are remote."""
    resume_session, restore, node = session or (None, None, None)
    if resume_session and not agents.can_resume(cfg):
        resume_session = node = None
    return resume_session, restore, node if remote else None


def _answer(results: Mapping[str, UnitResult], uid: str) -> str:
    r = results.get(uid)
    return r.outcome.message if r is not None and r.outcome is not None else ""


def verify_files(repo: Path, graph: UnitGraph, batch: Batch, results: Mapping[str, UnitResult], r: UnitResult,
                 branch: str) -> UnitResult:
    """CAST ``verify_files``: once the last of ``batch``'s final units is done, the files must exist (and not be
    empty) in the batch's work; else that unit fails, naming the missing paths (its work is kept on ``branch``)."""
    if not batch.verify_files or not r.status.ok:
        return r
    units = graph.of_batch(batch.id)
    inner = {d for u in units for d in u.depends_on}
    finals = [u.uid for u in units if u.uid not in inner]
    if any(f != r.unit_id and not (f in results and results[f].status.ok) for f in finals):
        return r
    commits = [r.commit if f == r.unit_id else results[f].commit for f in finals]

    def present(path: str) -> bool:
        return any(c and gitops.git(repo, "cat-file", "-s", f"{c}:{path}", check=False).stdout.strip()
                   not in ("", "0") for c in commits)

    missing = [p for p in batch.verify_files if not present(p)]
    if not missing:
        return r
    return replace(r, status=UnitStatus.FAILED,
                   error=f"verify_files: batch {batch.id} left no {', '.join(missing)} (its work is kept on "
                         f"{branch})")


def with_earlier_tries(earlier: list[UnitResult], r: UnitResult) -> UnitResult:
    """``r`` with what the unit's earlier, rate-limited dispatches tried and cost (every try counts)."""
    outcomes = [x.outcome for x in (*earlier, r) if x.outcome is not None]
    return replace(r, outcome=totals(outcomes) if outcomes else None, tries=sum(x.tries for x in (*earlier, r)),
                   try_classes=tuple(c for x in (*earlier, r) for c in x.try_classes),
                   started=earlier[0].started or r.started)


def note_owned_files(repo: Path, graph: UnitGraph, r: UnitResult, base: str) -> UnitResult:
    """CAST ``owns_files``: a unit that changed files another unit owns (and it does not) is reported, in the
    result's notes (and so in the journal and at the end of the run); its work is kept as it is."""
    owners = [(u.uid, u.owns_files) for u in graph.units if u.owns_files and u.uid != r.unit_id]
    if not owners or not r.status.ok or not r.commit or not r.changed:
        return r
    mine = graph.unit(r.unit_id).owns_files
    changed = gitops.out(repo, "diff", "--name-only", base, r.commit).splitlines()
    crossed = []
    for uid, owned in owners:
        files = [f for f in changed if _owned(f, owned) and not _owned(f, mine)]
        if files:
            crossed.append(f"edited {', '.join(files[:5])} that unit {uid} owns (owns_files)")
    return replace(r, notes=(*r.notes, *crossed)) if crossed else r


def _owned(path: str, patterns: tuple[str, ...]) -> bool:
    return any(path == p or fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)
