"""The one worker entry point, identical on every backend.

``run_segment(spec)`` gets the code (a worktree of a local repository, a bundle, or a git remote), puts the
stream's branch at ``spec.base``, runs the agent for each batch, commits after every batch, and returns a
``SegmentResult``. Local threads call it directly, Ray tasks call it on their node, and SSH hosts run
``python -m distpar.worker --serve`` (one process per slot for the whole run: JSON-line unit specs in, JSON-line
events and results out; see ``serve``). ``python -m distpar.worker SPEC.json`` runs one segment from a file.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import queue
import re
import shutil
import signal
import socket
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from distpar import agents
from distpar.core import model, names, ratelimit
from distpar.core.errors import GitError
from distpar.core.masking import mask
from distpar.core.model import AgentOutcome, BatchResult, BatchSpec, BatchStatus, SegmentResult, SegmentSpec
from distpar.infra import gitops, process, sandbox, workspace
from distpar.infra.capture import MaskedPipe, OutputLines
from distpar.infra.process import ProcessResult, run_process

TAIL_LINES = 20


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "_"


def node_name() -> str:
    return os.environ.get("DISTPAR_NODE") or socket.gethostname()


Emit = Callable[[str, dict[str, Any]], None]


def run_segment(spec: SegmentSpec, cancel: threading.Event | None = None, emit: Emit | None = None) -> SegmentResult:
    cancel = cancel or threading.Event()
    env = spec.identity.env()
    ws = Path(spec.workspace)
    log_dir = Path(spec.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    saved_ref: str | None = None

    _prepare(spec, ws, env)
    setup_now, setup_failed, ports = _ready_workspace(spec, ws, log_dir, cancel)
    env = {**env, "DISTPAR_PORT_BASE": str(ports), "DISTPAR_PORT_COUNT": str(workspace.PORTS_PER_WORKER)}
    if spec.plan_text:  # the plan travels with the work: prompts that say "per the plan at ..." can read it
        plan_file = log_dir / "plan.md"
        if not plan_file.exists() or plan_file.read_text() != spec.plan_text:
            plan_file.write_text(spec.plan_text)
        env["DISTPAR_PLAN_FILE"] = str(plan_file.resolve())
    results: list[BatchResult] = []
    failed = False
    for batch in spec.batches:
        if failed or cancel.is_set() or setup_failed:
            status = BatchStatus.INTERRUPTED if cancel.is_set() else (
                BatchStatus.FAILED if setup_failed else BatchStatus.SKIPPED)
            why = ("the run was interrupted" if cancel.is_set() else
                   f"this worker's workspace is not usable: {setup_failed.describe()}" if setup_failed else
                   "an earlier batch of this stream failed")
            results.append(BatchResult(batch.id, spec.stream, status, error=why, node=node_name(),
                                       attempt=spec.attempt, log_tail=setup_failed.tail if setup_failed else ""))
            continue
        result, saved = _run_batch(spec, batch, ws, log_dir, env, cancel, emit)
        saved_ref = saved or saved_ref
        results.append(result)
        failed = not result.status.ok

    head = gitops.out(ws, "rev-parse", "HEAD")
    bundle = _return_bundle(spec, ws, head, saved_ref) if spec.return_bundle else None
    if spec.source.kind == "url":  # hand the branch (and saved work) back by pushing it
        gitops.git(ws, "push", "--quiet", "--force", spec.source.location, f"HEAD:refs/heads/{spec.branch}",
                   *([f"{saved_ref}:{saved_ref}"] if saved_ref else []))
    return SegmentResult(
        run_id=spec.run_id,
        stream=spec.stream,
        segment=spec.segment,
        branch=spec.branch,
        base=spec.base,
        head=head,
        results=tuple(results),
        node=node_name(),
        bundle=bundle,
        saved_ref=saved_ref,
        interrupted=cancel.is_set(),
        setup=setup_now.to_dict() if setup_now else None,
    )


def _ready_workspace(spec: SegmentSpec, ws: Path, log_dir: Path, cancel: threading.Event
                     ) -> tuple[workspace.HookResult | None, workspace.HookResult | None, int]:
    """Once per workspace (its first unit): the included files, a block of ports, the setup command.
    Returns (the setup if it ran now, the setup if it failed (now or before), the first port)."""
    state = workspace.load_state(ws)
    ran: workspace.HookResult | None = None
    if state is None:
        source = spec.source.location if spec.source.kind == "worktree" else None
        copied = workspace.populate(ws, source, spec.include, spec.include_data)
        ports = workspace.free_port_block(spec.stream)
        if spec.setup:
            env = {**os.environ, **spec.env, "DISTPAR_PORT_BASE": str(ports),
                   "DISTPAR_PORT_COUNT": str(workspace.PORTS_PER_WORKER), "DISTPAR_WORKTREE": str(ws)}
            ran = workspace.run_hook("setup", spec.setup, ws, env, log_dir / f"setup-w{spec.stream + 1}.log",
                                     tuple(spec.env.values()), cancel)
        state = {"ports": ports, "included": copied, "setup": ran.to_dict() if ran else None}
        workspace.save_state(ws, state)
    setup = state.get("setup")
    failed = workspace.HookResult.from_dict(setup) if isinstance(setup, dict) and not setup.get("ok") else None
    return ran, failed, int(state["ports"])  # type: ignore[call-overload]




def _mark(ws: Path, ready: bool) -> None:
    marker = Path(gitops.out(ws, "rev-parse", "--path-format=absolute", "--git-dir")) / workspace.READY
    if ready:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def _prepare(spec: SegmentSpec, ws: Path, env: dict[str, str]) -> None:
    """Check out ``spec.branch`` at ``spec.base`` in ``ws``, getting the code as the source says. A workspace
    is kept for the worker's next units: those only move it to their own branch and base."""
    kind, location = spec.source.kind, spec.source.location
    fresh = not (ws / ".git").exists()
    if kind == "worktree":
        if fresh:
            ws.parent.mkdir(parents=True, exist_ok=True)
            gitops.worktree_add(location, ws, spec.branch, spec.base)
            gitops.submodules_like(location, ws)
            _mark(ws, True)
            return
    elif kind in ("bundle", "url"):
        if fresh:
            ws.mkdir(parents=True, exist_ok=True)
            gitops.git(ws, "init", "--quiet")
        refspecs = ["+refs/*:refs/distpar-in/*"] if kind == "bundle" else [
            "+refs/heads/*:refs/remotes/origin/*", "+refs/distpar/*:refs/distpar/*"]
        for src in filter(None, (location, *spec.source.increments)):  # no location: the workspace has the base
            gitops.git(ws, "fetch", "--quiet", "--no-tags", "--force", src, *refspecs)
        if fresh:
            gitops.git(ws, "checkout", "--quiet", "-B", spec.branch, spec.base, env=gitops.hooks_env(env, spec.hooks))
            _mark(ws, True)
            return
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    # A workspace from an earlier unit (or attempt) of this worker: move it to the new branch and base,
    # saving anything uncommitted first so that nothing is ever lost.
    if workspace.workspace_ready(ws) and (gitops.dirty_files(ws) or gitops.out(ws, "status", "--porcelain")):
        snap = gitops.snapshot(ws, f"distpar: uncommitted work found before unit {spec.batches[0].id}", env)
        if snap:
            gitops.update_ref(ws, f"refs/distpar/{spec.run_id}/saved/w{spec.stream + 1}-prepare", snap)
    _mark(ws, False)
    gitops.git(ws, "checkout", "--quiet", "--force", "-B", spec.branch, spec.base,
               env=gitops.hooks_env(env, spec.hooks))
    gitops.git(ws, "clean", "-fdq")
    _mark(ws, True)


def _run_batch(
    spec: SegmentSpec, batch: BatchSpec, ws: Path, log_dir: Path, env: dict[str, str], cancel: threading.Event,
    emit: Emit | None = None,
) -> tuple[BatchResult, str | None]:
    """Run one batch's agent; after a transient failure (rate limit, 5xx, a crash before any edit) try again,
    up to ``spec.agent_retries`` more times with exponential backoff, from the batch's start commit."""
    name = names.key(batch.id)
    out_path, log_path = log_dir / f"{name}.out", log_dir / f"{name}.log"
    prompt_file = log_dir / f"{name}.prompt.md"
    prompt_file.write_text(batch.prompt)
    before = gitops.out(ws, "rev-parse", "HEAD")
    genv = gitops.hooks_env(env, spec.hooks)  # distpar's own git commands in the worktree
    marks = _marks(ws)
    notes: list[str] = []
    home_error: str | None = None
    trailer = f"\n\nDistpar-Run: {spec.run_id}\nDistpar-Batch: {batch.id}\n"
    outcomes: list[AgentOutcome] = []
    secrets: tuple[str, ...] = tuple(spec.env.values())
    saved: str | None = None
    started, ended, exit_code = time.time(), None, None
    restored = _restore(ws, batch.restore)
    # An agent keeps its sessions on the machine it ran on: continue one only there; elsewhere a fresh session
    # goes on from the saved work (and is told so).
    resume = bool(batch.resume_session) and batch.session_node in (None, "", node_name())
    if batch.resume_session and not resume:
        with log_path.open("a") as log:
            log.write(f"--- distpar: the interrupted session lives on {batch.session_node}, not here "
                      f"({node_name()}): a fresh session continues from the saved work\n")
    for n in range(1, max(0, spec.agent_retries) + 2):
        ctx = agents.Context(batch.prompt, prompt_file, batch.id, ws, spec.run_id, spec.stream,
                             subagent_type=batch.subagent_type)
        if n == 1 and (resume or restored):
            prefix = RESUME_PREFIX if restored else RESUME_PREFIX_NOTHING_SAVED
            ctx = replace(ctx, prompt=prefix + batch.prompt)
            if resume:
                assert batch.resume_session
                ctx = replace(ctx, session_id=batch.resume_session, resume=True)
        inv = agents.invocation(batch.agent, ctx, os.environ, {**env, **spec.env}, spec.env)
        secrets = tuple(dict.fromkeys((*secrets, *inv.secrets)))
        with log_path.open("a") as log:
            log.write(f"--- distpar: batch {batch.id}, attempt {spec.attempt}, try {n}, on {node_name()}, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n--- argv[0]: {inv.argv[0]}\n"
                      + "".join(f"--- distpar: warning: {note}\n" for note in inv.notes))
        proc, outcome = _invoke(spec, batch, inv, ws, out_path, log_path, cancel, emit, announce=n == 1)
        if outcome.session_missing and ctx.resume:  # the agent never saved the session: go on in a fresh one
            with log_path.open("a") as log:
                log.write(f"--- distpar: {outcome.message}; continuing in a fresh session\n")
            ctx = ctx.fresh_session()
            inv = agents.invocation(batch.agent, ctx, os.environ, {**env, **spec.env}, spec.env)
            proc, outcome = _invoke(spec, batch, inv, ws, out_path, log_path, cancel, emit, announce=False)
        # The agent may have switched the worktree to another branch: distpar writes only its own branch.
        moved, home_error = _return_home(spec, batch, ws, genv, marks)
        notes += moved
        if home_error:
            outcome = replace(outcome, result_class="git_error", ok=False, transient=False, message=home_error)
        if outcome.session_id is None and agents.can_resume(batch.agent):
            outcome = replace(outcome, session_id=ctx.session_id)  # so an interrupted session can be resumed
        if proc is not None:
            started = proc.started if n == 1 else started
            ended, exit_code = proc.ended, proc.exit_code
        if outcome.result_class == "crash" and outcome.transient and _edited(ws, before):
            # A crash after edits may have done part of the work: trying again from the start could repeat
            # side effects outside the worktree, so it is not retried.
            outcome = replace(outcome, transient=False)
        outcomes.append(outcome)
        # A rate limit goes back to the coordinator, which slows the whole run down and starts the unit again when
        # the limit allows; the worker retries only what is transient for this agent alone (5xx, an early crash).
        if outcome.ok or not outcome.transient or outcome.rate_limited or n > spec.agent_retries or cancel.is_set():
            break
        delay = ratelimit.retry_delay(n)
        saved = _save_and_reset(spec, batch, ws, env, before, f"try {n} ({outcome.result_class})" + trailer,
                                f"-try{n}") or saved
        with log_path.open("a") as log:
            log.write(f"--- distpar: try {n} failed ({outcome.result_class}): "
                      f"{mask(outcome.message, secrets)[-300:]}; retrying in {delay:.1f}s\n")
        if cancel.wait(delay):
            outcomes.append(AgentOutcome("interrupted", False, "run interrupted while waiting to retry"))
            break

    tries = n
    outcome = model.totals(outcomes)
    status = {"success": BatchStatus.OK, "timeout": BatchStatus.TIMEOUT,
              "interrupted": BatchStatus.INTERRUPTED}.get(outcome.result_class, BatchStatus.FAILED)
    if status.ok and spec.verify:  # the user's gate: a batch whose check fails is failed, its work saved
        gate = workspace.run_hook("verify", spec.verify, ws, {**os.environ, **env, **spec.env}, log_path,
                                  secrets, cancel, timeout=batch.timeout)
        if not gate.ok:
            status = BatchStatus.FAILED
            outcome = replace(outcome, result_class="verify_failed", ok=False, message=gate.describe())
    sub_error = _submodule_edits(ws, log_dir, name, before)
    if sub_error and status.ok:  # never ok with work left out of the commit
        status = BatchStatus.FAILED
        outcome = replace(outcome, result_class="submodule_edit", ok=False, message=sub_error)
    elif sub_error:
        notes.append(sub_error)
    try:
        if status.ok:
            title = f"distpar: batch {batch.id}: {batch.description}".rstrip(": ")
            if not gitops.commit_all(ws, title + trailer, env, spec.hooks) \
                    and gitops.out(ws, "rev-parse", "HEAD") != before:
                # The agent committed everything itself (aider does): an empty commit still marks the batch as
                # done on the branch, which is what resume reads after a coordinator died.
                gitops.git(ws, "commit", "--quiet", "--no-verify", "--allow-empty", "-m",
                           f"{title} (committed by the agent){trailer}", env=genv)
        else:
            # Failed or interrupted work stays off the branch (it is not a finished batch) but is never lost.
            saved = _save_and_reset(spec, batch, ws, genv, before, f"{status.value}" + trailer, "") or saved
    except GitError as exc:
        # Deterministic (a signing program, a filter, a hook, a ref name): the batch fails once, with its work
        # saved; nothing is retried and no other batch is blamed.
        msg = gitops.explain(exc)
        status = BatchStatus.FAILED
        outcome = replace(outcome, result_class="git_error", ok=False, transient=False, message=msg)
        try:
            saved = _save_and_reset(spec, batch, ws, genv, before, "git_error" + trailer, "") or saved
            if saved:
                msg += f"; the batch's work is saved on {saved}"
        except GitError as again:
            msg += f"; its work could not be saved on a ref ({gitops.explain(again)}) and is left in {ws}"
        outcome = replace(outcome, message=msg)
    after = gitops.out(ws, "rev-parse", "HEAD")
    if status.ok and spec.warn_size and after != before:
        notes += [f"added {path} ({size / 2**20:.1f} MB), over the warning size of {spec.warn_size / 2**20:.1f} MB; "
                  "it is committed: check that it belongs in the repository"
                  for path, size in gitops.large_files(ws, before, after, spec.warn_size)]
    if notes:
        with log_path.open("a") as log:
            log.write("".join(f"--- distpar: note: {n}\n" for n in notes))
    result = BatchResult(
        batch_id=batch.id,
        stream=spec.stream,
        status=status,
        exit_code=exit_code,
        started=started,
        ended=ended or time.time(),
        commit=after,
        changed=after != before,
        outcome=outcome,
        log_path=str(log_path),
        log_tail=_tail(log_path, secrets),
        error="" if status.ok else mask(outcome.message or outcome.result_class, secrets),
        node=node_name(),
        attempt=spec.attempt,
        tries=tries,
        try_classes=tuple(o.result_class for o in outcomes[:tries]),
        notes=tuple(mask(n, secrets) for n in notes),
    )
    return result, saved


def _marks(ws: Path) -> tuple[dict[str, str], int]:
    """What the repository's branches and the worktree's HEAD log look like before a batch's agent runs."""
    log = gitops.git(ws, "reflog", "show", "--format=%H", "HEAD", check=False).stdout.split()
    return gitops.refs(ws, "refs/heads/"), len(log)


def _return_home(spec: SegmentSpec, batch: BatchSpec, ws: Path, env: dict[str, str],
                 marks: tuple[dict[str, str], int]) -> tuple[list[str], str | None]:
    """Put the worktree back on the stream's branch when the agent switched it elsewhere (``git checkout
    other``), carrying over the edits it made there; report what it did to branches. Returns (notes, error):
    the error says why its edits could not be carried over (they are saved on a ref then)."""
    want = f"refs/heads/{spec.branch}"
    heads_before, n_before = marks
    entries = gitops.git(ws, "reflog", "show", "--format=%H %gs", "HEAD", check=False).stdout.splitlines()
    entries = entries[:max(0, len(entries) - n_before)]  # what HEAD went through in this worktree, newest first
    here = {line.split(" ", 1)[0] for line in entries}
    notes = []
    for ref, oid in gitops.refs(ws, "refs/heads/").items():
        old = heads_before.get(ref)
        # Only what this worktree did: other streams, other runs and the user move branches meanwhile too.
        if ref == want or old == oid or ref.startswith("refs/heads/distpar/") or oid not in here:
            continue
        name = ref.removeprefix("refs/heads/")
        notes.append(f"the agent created branch {name} ({oid[:12]}); distpar left it" if old is None else
                     f"the agent moved branch {name} from {old[:12]} to {oid[:12]}; distpar left it there "
                     f"(git branch -f {name} {old[:12]} puts it back)")
    proc = gitops.git(ws, "symbolic-ref", "--quiet", "HEAD", check=False)
    on = proc.stdout.strip() if proc.returncode == 0 else None
    if on == want:
        return notes, _rewritten(spec, batch, ws, env, heads_before.get(want))
    cur = gitops.try_rev(ws, "HEAD")
    where = f"branch {on.removeprefix('refs/heads/')}" if on else f"a detached HEAD at {(cur or '?')[:12]}"
    # Where it switched to: the last "checkout: moving from <our branch>" in the worktree's HEAD log, else the
    # branch's value before the batch, else the fork point.
    start = next((line.split(" ", 1)[0] for line in entries
                  if line.partition(" ")[2].startswith(f"checkout: moving from {spec.branch} to ")), None)
    tip = gitops.rev(ws, want)
    if start is None and cur:
        start = heads_before.get(on or "") or gitops.git(ws, "merge-base", tip, cur, check=False).stdout.strip() or cur
    theirs = (gitops.snapshot(ws, f"distpar: work of batch {batch.id} on {where}", env) or cur) if cur else None
    gitops.git(ws, "checkout", "--quiet", "--force", spec.branch, env=env)
    gitops.git(ws, "clean", "-fdq", env=env)
    if not (theirs and start) or gitops.tree_of(ws, theirs) == gitops.tree_of(ws, start):
        return [*notes, f"the agent switched the worktree to {where} and changed nothing there; distpar switched "
                        f"it back to {spec.branch}"], None
    # Its edits are the change from ``start`` to ``theirs``: applied to our branch with a three-way merge
    # whose base is ``start`` (two commits on top of it, so git 2.38's merge-tree picks that base).
    ours_c = gitops.out(ws, "commit-tree", gitops.tree_of(ws, tip), "-p", start, "-m", "ours", env=env)
    theirs_c = gitops.out(ws, "commit-tree", gitops.tree_of(ws, theirs), "-p", start, "-m", "theirs", env=env)
    merged = gitops.git(ws, "merge-tree", "--write-tree", "--name-only", "--no-messages", ours_c, theirs_c,
                        check=False)
    if merged.returncode == 0:
        gitops.git(ws, "read-tree", "-u", "--reset", merged.stdout.split()[0], env=env)
        return [*notes, f"the agent switched the worktree to {where}; distpar switched it back to {spec.branch} "
                        "and kept the agent's edits"], None
    ref = f"refs/distpar/{spec.run_id}/saved/{safe_name(batch.id)}-elsewhere"
    gitops.update_ref(ws, ref, theirs)
    files = ", ".join(merged.stdout.splitlines()[1:6])
    return notes, (f"the agent switched the worktree to {where}, and its edits there conflict with "
                   f"{spec.branch} ({files}); they are saved on {ref}")


def _rewritten(spec: SegmentSpec, batch: BatchSpec, ws: Path, env: dict[str, str], before: str | None) -> str | None:
    """The agent reset or amended the stream's branch below where the batch started (earlier batches' commits
    would be dropped): its work is saved on a ref, the branch put back, and the batch fails saying so."""
    tip = gitops.rev(ws, f"refs/heads/{spec.branch}")
    if before is None or gitops.is_ancestor(ws, before, tip):
        return None
    ref = f"refs/distpar/{spec.run_id}/saved/{safe_name(batch.id)}-rewritten"
    gitops.update_ref(ws, ref, gitops.snapshot(ws, f"distpar: work of batch {batch.id} (branch rewritten)", env)
                      or tip)
    gitops.git(ws, "reset", "--quiet", "--hard", before, env=env)
    gitops.git(ws, "clean", "-fdq", env=env)
    return (f"the agent moved {spec.branch} from {before[:12]} to {tip[:12]}, which drops commits of this stream "
            f"(git reset or --amend); distpar put the branch back, and the agent's work is saved on {ref}")


def _submodule_edits(ws: Path, log_dir: Path, name: str, before: str) -> str | None:
    """Edits inside a submodule are not committed by distpar: when a batch made some, they are saved in an
    archive next to its log and the batch fails saying so (never ok with work dropped)."""
    edited: list[str] = []
    if not (ws / ".gitmodules").exists() and not gitops.out(ws, "ls-tree", before, ".gitmodules"):
        return None  # no submodules (the cheap check: a batch runs this on every repository)
    for path in gitops.submodules(ws, before):
        d = ws / path
        if (d / ".git").exists():
            if gitops.out(ws, "status", "--porcelain", "--ignore-submodules=none", "--", path):
                edited.append(path)
        elif d.is_dir() and any(d.iterdir()):
            edited.append(path)
    if not edited:
        return None
    archive = log_dir / f"{name}.submodules.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in edited:
            tar.add(ws / path, arcname=path, filter=lambda t: None if "/.git/" in f"/{t.name}/" else t)
    for path in edited:  # back to what the branch records, so the next batch starts clean
        d = ws / path
        if (d / ".git").exists():
            gitops.git(d, "reset", "--quiet", "--hard", check=False)
            gitops.git(d, "clean", "-fdq", check=False)
            gitops.git(ws, "submodule", "update", "--quiet", "--force", "--", path, check=False)
        else:
            for child in d.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return (f"the agent edited files inside submodule(s) {', '.join(edited)}, which distpar does not commit: "
            f"those files are saved in {archive}")


RESUME_PREFIX = ("Your previous session on this task was interrupted; the work it had done is in the working tree. "
                 "Continue where you left off. The task:\n")
RESUME_PREFIX_NOTHING_SAVED = ("Your previous session on this task was interrupted before it changed any file. "
                               "Continue where you left off. The task:\n")


def _restore(ws: Path, commit: str | None) -> bool:
    """Put an interrupted batch's saved work back in the worktree (uncommitted). True only when it is there:
    the agent is never told its work is in the tree when it is not."""
    if not commit or not gitops.try_rev(ws, f"{commit}^{{commit}}"):
        return False
    gitops.git(ws, "checkout", commit, "--", ".")
    gitops.git(ws, "reset", "--quiet")
    return True


def _invoke(spec: SegmentSpec, batch: BatchSpec, inv: agents.Invocation, ws: Path, out_path: Path, log_path: Path,
            cancel: threading.Event, emit: Emit | None = None, announce: bool = True
            ) -> tuple[ProcessResult | None, AgentOutcome]:
    """One agent process: wait for a slot, run it with its output masked into the logs, classify it. With
    ``emit``: ``unit_started`` when it starts (if ``announce``: the unit's first try), then its output lines
    as ``agent_output`` events as they come (masked, bounded: see capture.OutputLines)."""
    if inv.refused:
        with log_path.open("a") as log:
            log.write(f"--- distpar: not started: {inv.refused}\n")
        return None, AgentOutcome("error", False, inv.refused)
    with agent_slot(spec.max_concurrent_agents, spec.stagger, cancel) as go:
        if not go:
            return None, AgentOutcome("interrupted", False, "run interrupted")
        fields = {"batch": batch.id, "stream": spec.stream, "attempt": spec.attempt, "node": node_name()}
        if emit is not None and announce:  # the agent really starts now (not when the unit was handed over)
            emit("unit_started", {**fields, "at": time.time()})
        lines = OutputLines(functools.partial(emit, "agent_output"), fields) if emit is not None else None
        argv = inv.argv
        try:
            if spec.sandbox:
                argv = sandbox.wrap(inv.argv, ws, spec.branch, batch.agent.preset, spec.sandbox_allow,
                                    read_only=[spec.log_dir])
            # Lines reach the events only masked: the pipes mask before anything is split off.
            with MaskedPipe([out_path, log_path], inv.secrets, lines.pipe("out") if lines else None) as out, \
                    MaskedPipe([log_path], inv.secrets, lines.pipe("err") if lines else None) as err:
                proc = run_process(argv, cwd=ws, env=inv.env, stdout_path=out.path, stderr_path=err.path,
                                   timeout=batch.timeout, cancel=cancel, stdin_path=inv.stdin,
                                   stall_timeout=inv.stall_timeout,
                                   last_output=lambda: max(out.last_output, err.last_output))
        except FileNotFoundError as exc:
            msg = f"agent executable not found: {exc.filename or argv[0]}"
            with log_path.open("a") as log:
                log.write(msg + "\n")
            return None, AgentOutcome("error", False, msg)
        finally:
            process.reap_unit(spec.run_id, batch.id)  # what it left running in sessions of their own
            if lines is not None:
                lines.close()  # the count of the last second's skipped lines
    if proc.timed_out:
        return proc, AgentOutcome("timeout", False, f"killed after {batch.timeout:g}s")
    if proc.cancelled:
        return proc, AgentOutcome("interrupted", False, "run interrupted")
    if proc.stalled:
        return proc, agents.stalled(inv, out.text, err.text)
    # The parser sees the masked text, so nothing derived from it (messages, journal, events) holds a secret.
    return proc, inv.parse(out.text, err.text, proc.exit_code)


def _edited(ws: Path, before: str) -> bool:
    return gitops.out(ws, "rev-parse", "HEAD") != before or bool(gitops.out(ws, "status", "--porcelain"))


def _save_and_reset(spec: SegmentSpec, batch: BatchSpec, ws: Path, env: dict[str, str], before: str, what: str,
                    suffix: str) -> str | None:
    """Keep the batch's edits (and any commits the agent made itself) on a ref, then put the worktree back at
    the batch's start commit. Returns the ref, or None when there was nothing to keep."""
    head = gitops.out(ws, "rev-parse", "HEAD")
    snap = gitops.snapshot(ws, f"distpar: unfinished work of batch {batch.id}: {what}", env)
    keep = snap or (head if head != before else None)
    ref = None
    if keep:
        ref = f"refs/distpar/{spec.run_id}/saved/{names.key(batch.id)}{suffix}"  # names.key: always ref-safe
        gitops.update_ref(ws, ref, keep)
    gitops.git(ws, "reset", "--quiet", "--hard", before)
    gitops.git(ws, "clean", "-fdq")
    return ref


# Process-wide: agents of every stream this process runs share one cap and one start spacing. On the local
# backend that is the whole run; a remote worker process applies them to what it runs (per host slot).
_slot_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}
_start_lock = threading.Lock()
_last_start = 0.0


@contextmanager
def agent_slot(limit: int | None, stagger: float, cancel: threading.Event) -> Iterator[bool]:
    """Hold one of ``limit`` agent slots, starting at least ``stagger`` s after the previous agent start.
    Yields False when the run is cancelled while waiting."""
    global _last_start
    sem = None
    if limit:
        with _slot_lock:
            sem = _slots.setdefault(limit, threading.BoundedSemaphore(limit))
        while not sem.acquire(timeout=0.1):
            if cancel.is_set():
                yield False
                return
    try:
        if stagger > 0:
            with _start_lock:  # providers rate-limit bursts of new sessions: space the starts out
                wait = _last_start + stagger - time.monotonic()
                if wait > 0:
                    cancel.wait(wait)
                _last_start = time.monotonic()
        yield not cancel.is_set()
    finally:
        if sem is not None:
            sem.release()


def _tail(path: Path, secrets: Iterable[str]) -> str:
    lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return mask("\n".join(lines), secrets)



def _return_bundle(spec: SegmentSpec, ws: Path, head: str, saved_ref: str | None) -> str | None:
    path = ws.parent / f"{safe_name(spec.branch)}-{spec.segment}-{spec.attempt}.bundle"
    revs = [spec.branch, f"^{spec.base}"]
    if saved_ref:
        revs.append(saved_ref)
    return str(path) if gitops.bundle_create(ws, path, revs) else None


def serve() -> int:
    """``python -m distpar.worker --serve``: run units one after another, for the whole run, keeping the
    workspaces on disk between them. Stdin: JSON lines, ``{"op": "unit", "spec": {...}}`` (queued, run in
    order) or ``{"op": "cancel"}`` (the running unit stops, its agents' work is saved; later units end at
    once as interrupted), ``{"op": "drop", "paths": [...]}`` (result bundles that arrived: removed). Stdout:
    JSON lines as things happen: ``{"event": KIND, "data": {...}}``, then per unit ``{"result": {...}, "files":
    {path: base64}}`` (its logs and result bundle) or ``{"error": "..."}``. End of stdin or SIGTERM: like
    cancel, then exit."""
    from distpar.worker.supervisor import read_lines

    lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        with lock:
            try:
                while data:
                    data = data[os.write(1, data):]
            except OSError:  # nobody reads any more: the work stays in the workspace (and its bundle)
                pass

    cancel = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: cancel.set())
    units: queue.SimpleQueue[SegmentSpec | str | None] = queue.SimpleQueue()

    def read() -> None:
        for line in read_lines(0):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                if msg.get("op") == "cancel":
                    cancel.set()
                elif msg.get("op") == "drop":  # a result bundle the coordinator has a copy of now
                    for path in msg["paths"]:
                        if str(path).endswith(".bundle"):
                            Path(path).unlink(missing_ok=True)
                elif msg.get("op") == "unit":
                    units.put(SegmentSpec.from_dict(msg["spec"]))
                else:
                    units.put(f"unknown op {msg.get('op')!r}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                units.put(f"bad input line: {type(exc).__name__}: {exc}")
        cancel.set()
        units.put(None)

    threading.Thread(target=read, daemon=True).start()
    while (item := units.get()) is not None:
        if isinstance(item, str):
            send({"error": item})
            continue
        try:
            result = run_segment(item, cancel, lambda kind, data: send({"event": kind, "data": data}))
        except Exception as exc:  # git or the disk failed under this unit: report it, stay up for the next one
            tb = traceback.format_exc(limit=4)
            send({"error": mask(f"{type(exc).__name__}: {exc}\n{tb}", item.env.values())})
            continue
        # The unit's logs and result bundle travel with the result: no extra round trip, no SFTP needed (not
        # the copy of the plan run_segment leaves there: the coordinator has it).
        files = [*(f for f in Path(item.log_dir).iterdir() if f.name != "plan.md"),
                 *([Path(result.bundle)] if result.bundle else [])]
        send({"result": result.to_dict(),
              "files": {str(f): base64.b64encode(f.read_bytes()).decode() for f in files if f.is_file()}})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m distpar.worker SPEC.json``: run one segment, print its result as JSON on stdout;
    ``python -m distpar.worker --serve``: see ``serve``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--serve"]:
        return serve()
    if len(args) != 1:
        print("usage: python -m distpar.worker SPEC.json | --serve", file=sys.stderr)
        return 2
    spec = SegmentSpec.from_dict(json.loads(Path(args[0]).read_text()))
    # A process of its own: children its agents move into sessions of their own come back to it (and are
    # collected when reap_unit kills them) instead of going to init. Not in run_segment: threads of a
    # coordinator (the local backend) would attract every orphan of the coordinator's process tree.
    process.become_subreaper()
    cancel = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: cancel.set())
    result = run_segment(spec, cancel)
    print(json.dumps(result.to_dict()))
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
