"""``--on-conflict resolve``: a final merge that conflicts is handed to the agent in an integration worktree of
distpar's own (under the run directory), never in the user's checkout. The agent gets the conflict markers, both
sides' diffs and both units' prompts; it must leave no marker and no unmerged path. The resolution is that
merge's commit (trailers ``Distpar-Resolved-Units:`` and ``Distpar-Resolver:``), kept on a ref whatever happens;
``--verify`` runs on it here and ``--verify-merged`` on the whole merge afterwards (``landing``). Nothing here
moves a branch the user owns."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distpar import agents
from distpar.coordinator.merge import Conflict
from distpar.coordinator.options import RunOptions
from distpar.coordinator.site import RunSite
from distpar.core import names
from distpar.core.errors import DistparError
from distpar.core.model import AgentOutcome
from distpar.infra import gitops, workspace
from distpar.infra.process import run_process

log = logging.getLogger(__name__)

MARKER = re.compile(r"^(<{7}|>{7})( |$)|^={7}$", re.MULTILINE)
SECTION_LIMIT = 20_000  # characters of each diff or file put in the prompt


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a conflicting merge: the units it holds that touched the files, and their prompts."""

    units: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclass
class Resolution:
    """How one resolution went: ``commit`` (kept on ``ref``) when the agent left a clean merge, else ``why`` not."""

    units: tuple[str, ...]
    files: tuple[str, ...]
    commit: str | None = None
    ref: str = ""
    why: str = ""
    diff: str = ""
    gate: workspace.HookResult | None = None
    cost_usd: float | None = None
    log_path: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.commit is not None and not self.why

    def to_dict(self) -> dict[str, Any]:
        return {"units": list(self.units), "files": list(self.files), "commit": self.commit, "ref": self.ref,
                "ok": self.ok, "why": self.why, "diff": self.diff[:SECTION_LIMIT], "cost_usd": self.cost_usd,
                "log": self.log_path, "gate": self.gate.to_dict() if self.gate else None}


def _cut(text: str) -> str:
    return text if len(text) <= SECTION_LIMIT else text[:SECTION_LIMIT] + "\n... (cut)"


def _quoted(text: str) -> str:
    """Text shown to the agent as material, never read as an instruction line."""
    return "\n".join("| " + line for line in text.splitlines())


def prompt(conflict: Conflict, ours: Side, theirs: Side, marked: Mapping[str, str], diff_ours: str,
           diff_theirs: str) -> str:
    """The resolve prompt (the same for every preset; a large one reaches the agent through its prompt file)."""
    parts = [
        "distpar: resolve a merge conflict.",
        f"You are in a git worktree where `{conflict.theirs}` is being merged into the integration of the work "
        f"so far, and the merge stopped with conflicts in: {', '.join(conflict.files)}.",
        "Edit each conflicting file so that it keeps what both sides meant to do; remove every conflict marker "
        "(<<<<<<<, =======, >>>>>>>). Change nothing else, and do not commit: distpar checks and commits the result.",
        f"\nThe work already integrated (units {', '.join(ours.units) or '-'}) was asked:",
        *(_quoted(p) for p in ours.prompts),
        f"\nThe unit being merged ({', '.join(theirs.units)}) was asked:",
        *(_quoted(p) for p in theirs.prompts),
        "\nThe integrated side's diff of these files (from the common ancestor):", _quoted(_cut(diff_ours)),
        "\nThe merged unit's diff of these files (from the common ancestor):", _quoted(_cut(diff_theirs)),
        "\nThe files as they are now, with the conflict markers:",
    ]
    for path, text in marked.items():
        parts += [f"--- {path}", _quoted(_cut(text))]
    return "\n".join(parts) + "\n"


def markers_left(wt: Path, files: tuple[str, ...]) -> list[str]:
    """The files among ``files`` that still hold a conflict marker."""
    left = []
    for f in files:
        p = wt / f
        if p.is_file():
            try:
                if MARKER.search(p.read_text(errors="replace")):
                    left.append(f)
            except OSError:
                continue
    return left


def resolve(site: RunSite, options: RunOptions, conflict: Conflict, head: str, tip: str, ours: Side, theirs: Side,
            n: int, include: list[str], cancel: threading.Event | None = None) -> Resolution:
    """Merge ``tip`` into ``head`` in a worktree of the run's own and let the agent resolve it (see the module)."""
    repo = site.repo
    units = tuple(dict.fromkeys((*ours.units, *theirs.units)))
    res = Resolution(units, conflict.files)
    wt = site.run_dir / "resolve" / f"{n}-{names.key(theirs.units[0]) if theirs.units else n}"
    logs = site.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res.log_path = str(logs / f"resolve-{n}.log")
    if wt.exists():  # a resumed run resolves this merge again from the start
        gitops.worktree_remove(repo, wt)
    wt.parent.mkdir(parents=True, exist_ok=True)
    with gitops.repo_lock(repo, "worktree"):
        gitops.git(repo, "worktree", "add", "--quiet", "--detach", str(wt), head)
    try:
        return _resolve(site, options, conflict, head, tip, ours, theirs, n, include, wt, res, cancel)
    finally:
        gitops.worktree_remove(repo, wt)


def _resolve(site: RunSite, options: RunOptions, conflict: Conflict, head: str, tip: str, ours: Side, theirs: Side,
             n: int, include: list[str], wt: Path, res: Resolution, cancel: threading.Event | None) -> Resolution:
    env = {**os.environ, **site.env}
    merging = gitops.git(wt, "merge", "--no-ff", "--no-commit", "--quiet", tip, check=False, env=env)
    if merging.returncode == 0:  # (it conflicted when the run merged it: nothing to resolve now is odd, but fine)
        res.why = "the merge did not conflict in the integration worktree"
        return res
    base = gitops.out(site.repo, "merge-base", head, tip).strip()
    files = list(conflict.files)
    marked = {f: (wt / f).read_text(errors="replace") for f in files if (wt / f).is_file()}
    text = prompt(conflict, ours, theirs, marked, gitops.out(site.repo, "diff", base, head, "--", *files),
                  gitops.out(site.repo, "diff", base, tip, "--", *files))
    outcome = _run_agent(site, options, text, wt, n, Path(res.log_path), cancel)
    res.cost_usd = outcome.cost_usd
    if not outcome.ok:
        res.why = f"the agent did not finish ({outcome.result_class}): {outcome.message[-300:]}"
        return res
    left = markers_left(wt, conflict.files)
    if left:
        res.why = f"conflict markers left in {', '.join(left)}"
        return res
    gitops.git(wt, "add", "-A", "--", ".", env=env)
    unmerged = gitops.out(wt, "ls-files", "--unmerged").strip()
    if unmerged:
        res.why = "unmerged paths left: " + ", ".join(sorted({ln.split("\t")[-1] for ln in unmerged.splitlines()}))
        return res
    tree = gitops.out(wt, "write-tree").strip()
    msg = (f"distpar: merge {conflict.theirs}, conflict resolved by the agent\n\n"
           f"Distpar-Run: {site.run_id}\nDistpar-Resolved-Units: {', '.join(res.units)}\n"
           f"Distpar-Resolver: {options.agent.preset or 'template'}\n")
    commit = gitops.out(wt, "commit-tree", tree, "-p", head, "-p", tip, "-m", msg, env=env).strip()
    res.commit = commit
    res.ref = f"refs/distpar/{site.run_id}/saved/resolved-{n}"  # kept, whether it lands or not
    gitops.update_ref(site.repo, res.ref, commit)
    res.diff = gitops.out(site.repo, "show", "--format=", "--cc", commit)
    if options.verify:
        gate = workspace.verify_merged(site.repo, commit, site.run_dir / "resolve-verify", options.verify,
                                       options.setup, include, site.run_dir / "logs" / f"resolve-{n}-verify.log",
                                       cancel)
        if not gate.ok:
            res.gate = replace(gate, name="verify (on the resolution)")
            res.why = f"--verify failed on the resolution (exit {gate.exit_code})"
    return res


def _run_agent(site: RunSite, options: RunOptions, text: str, wt: Path, n: int, log_path: Path,
               cancel: threading.Event | None) -> AgentOutcome:
    """The run's agent on ``text`` in ``wt`` (its argv rules: a large prompt through the prompt file)."""
    prompt_file = site.run_dir / "logs" / f"resolve-{n}.prompt.md"
    prompt_file.write_text(text)
    ctx = agents.Context(text, prompt_file, f"resolve-{n}", wt, site.run_id, 0)
    forwarded = {k: os.environ[k] for k in options.forward_env if k in os.environ}
    inv = agents.invocation(options.agent, ctx, os.environ, {**site.env, **forwarded}, forwarded)
    if inv.refused:
        return AgentOutcome("error", False, inv.refused)
    out, err = log_path.with_suffix(".out"), log_path
    try:
        proc = run_process(inv.argv, cwd=wt, env=inv.env, stdout_path=out, stderr_path=err, timeout=options.timeout,
                           cancel=cancel, stdin_path=inv.stdin, stall_timeout=inv.stall_timeout)
    except FileNotFoundError as exc:
        return AgentOutcome("error", False, f"agent executable not found: {exc.filename}")
    except DistparError as exc:
        return AgentOutcome("error", False, exc.message)
    if proc.timed_out:
        return AgentOutcome("timeout", False, f"killed after {options.timeout:g}s")
    if proc.cancelled:
        return AgentOutcome("interrupted", False, "run interrupted")
    return inv.parse(_read(out), _read(err), proc.exit_code)


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""
