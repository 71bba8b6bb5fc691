"""A unit's agent: its tries (a transient failure is tried again from the unit's start commit), each one an
agent process run with its output masked into the logs and classified; the process-wide cap on agents running
at once and the spacing of their starts; an interrupted unit's saved work and session."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from distpar import agents
from distpar.core import ratelimit
from distpar.core.masking import mask
from distpar.core.model import AgentOutcome
from distpar.infra import gitops, process, sandbox
from distpar.infra.capture import MaskedPipe, OutputLines
from distpar.infra.process import ProcessResult, run_process
from distpar.worker import commit
from distpar.worker.common import UnitRun, node_name


class Tries(NamedTuple):
    outcomes: list[AgentOutcome]  # one per try (and a last "interrupted" when the run stopped while waiting)
    tries: int  # agent invocations
    proc: ProcessResult | None  # the last process that ran
    started: float  # when the first one started


def run_agent(u: UnitRun) -> Tries:
    """Run the unit's agent; after a transient failure (rate limit, 5xx, a crash before any edit) try again,
    up to ``agent_retries`` more times with exponential backoff, from the unit's start commit."""
    spec = u.spec
    marks = commit.marks(u.ws)
    restored = restore(u.ws, spec.restore)
    # An agent keeps its sessions on the machine it ran on: continue one only there; elsewhere a fresh session
    # goes on from the saved work (and is told so).
    resume = bool(spec.session) and spec.node in (None, "", node_name())
    if spec.session and not resume:
        u.log(f"--- distpar: the interrupted session lives on {spec.node}, not here "
              f"({node_name()}): a fresh session continues from the saved work\n")
    genv = gitops.hooks_env(u.env, u.opts.hooks)  # distpar's own git commands in the worktree
    outcomes: list[AgentOutcome] = []
    started, last = time.time(), None
    retries, n = max(0, u.opts.agent_retries), 0
    for n in range(1, retries + 2):
        ctx = agents.Context(spec.prompt, u.prompt_file, spec.uid, u.ws, u.settings.run_id, spec.worker,
                             subagent_type=spec.subagent_type)
        if n == 1 and (resume or restored):
            ctx = replace(ctx, prompt=(RESUME_PREFIX if restored else RESUME_PREFIX_NOTHING_SAVED) + spec.prompt)
            if resume:
                assert spec.session
                ctx = replace(ctx, session_id=spec.session, resume=True)
        proc, outcome, ctx = _try(u, ctx, n)
        u.wrecked = commit.wrecked(u) or ""
        if u.wrecked:  # nothing of git works there any more: the unit fails once, saying so (never retried)
            if proc is not None:
                started, last = (proc.started if n == 1 else started), proc
            outcomes.append(replace(outcome, result_class="workspace_destroyed", ok=False, transient=False,
                                    message=u.wrecked))
            break
        # The agent may have switched the worktree to another branch: distpar writes only its own branch.
        try:
            moved, home_error = commit.return_home(u, genv, marks)
        except Exception as exc:  # deterministic: not the transport's, never retried as one
            moved, home_error = [], (f"distpar could not check what the agent did to the worktree's branch: "
                                     f"{type(exc).__name__}: {exc}")
        u.notes += moved
        if home_error:
            outcome = replace(outcome, result_class="git_error", ok=False, transient=False, message=home_error)
        if outcome.session_id is None and agents.can_resume(spec.agent):
            outcome = replace(outcome, session_id=ctx.session_id)  # so an interrupted session can be resumed
        if proc is not None:
            started = proc.started if n == 1 else started
            last = proc
        if outcome.result_class == "crash" and outcome.transient and commit.edited(u.ws, u.before):
            # A crash after edits may have done part of the work: trying again from the start could repeat
            # side effects outside the worktree, so it is not retried.
            outcome = replace(outcome, transient=False)
        outcomes.append(outcome)
        # A rate limit goes back to the coordinator, which slows the whole run down and starts the unit again when
        # the limit allows; the worker retries only what is transient for this agent alone (5xx, an early crash).
        if outcome.ok or not outcome.transient or outcome.rate_limited or n > retries or u.cancel.is_set():
            break
        delay = ratelimit.retry_delay(n)
        u.saved = commit.save_and_reset(u, u.env, f"try {n} ({outcome.result_class})" + u.trailer,
                                        f"-try{n}") or u.saved
        u.log(f"--- distpar: try {n} failed ({outcome.result_class}): "
              f"{mask(outcome.message, u.secrets)[-300:]}; retrying in {delay:.1f}s\n")
        if u.cancel.wait(delay):
            outcomes.append(AgentOutcome("interrupted", False, "run interrupted while waiting to retry"))
            break
    return Tries(outcomes, n, last, started)


def _try(u: UnitRun, ctx: agents.Context, n: int) -> tuple[ProcessResult | None, AgentOutcome, agents.Context]:
    """One try: the agent's invocation, logged and run; a session the agent does not have is started afresh."""
    spec = u.spec
    forwarded = u.settings.env
    inv = agents.invocation(spec.agent, ctx, os.environ, {**u.env, **forwarded}, forwarded)
    u.secrets = tuple(dict.fromkeys((*u.secrets, *inv.secrets)))
    u.log(f"--- distpar: unit {spec.uid}, attempt {spec.attempt}, try {n}, on {node_name()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n--- argv[0]: {inv.argv[0]}\n"
          + "".join(f"--- distpar: warning: {note}\n" for note in inv.notes))
    proc, outcome = _invoke(u, inv, announce=n == 1)
    if outcome.session_missing and ctx.resume:  # the agent never saved the session: go on in a fresh one
        u.log(f"--- distpar: {outcome.message}; continuing in a fresh session\n")
        ctx = ctx.fresh_session()
        inv = agents.invocation(spec.agent, ctx, os.environ, {**u.env, **forwarded}, forwarded)
        proc, outcome = _invoke(u, inv, announce=False)
    return proc, outcome, ctx


def _invoke(u: UnitRun, inv: agents.Invocation, announce: bool = True) -> tuple[ProcessResult | None, AgentOutcome]:
    """One agent process: wait for a slot, run it with its output masked into the logs, classify it. With
    ``emit``: ``unit_started`` when it starts (if ``announce``: the unit's first try), then its output lines
    as ``agent_output`` events as they come (masked, bounded: see capture.OutputLines)."""
    spec, opts, cancel, emit = u.spec, u.opts, u.cancel, u.emit
    if inv.refused:
        u.log(f"--- distpar: not started: {inv.refused}\n")
        return None, AgentOutcome("error", False, inv.refused)
    with agent_slot(opts.max_concurrent_agents, opts.stagger, cancel) as go:
        if not go:
            return None, AgentOutcome("interrupted", False, "run interrupted")
        fields = {"unit": spec.uid, "worker": spec.worker, "attempt": spec.attempt, "node": node_name()}
        if emit is not None and announce:  # the agent really starts now (not when the unit was handed over)
            emit("unit_started", {**fields, "at": time.time()})
        lines = OutputLines(functools.partial(emit, "agent_output"), fields) if emit is not None else None
        argv = inv.argv
        since = process.boot_ticks() - 1  # a tick early: what the agent starts is never older
        try:
            if opts.sandbox:
                argv = sandbox.wrap(inv.argv, u.ws, spec.branch, spec.agent.preset, opts.sandbox_allow,
                                    read_only=[u.settings.log_dir])
            # Lines reach the events only masked: the pipes mask before anything is split off.
            with MaskedPipe([u.out_path, u.log_path], inv.secrets, lines.pipe("out") if lines else None) as out, \
                    MaskedPipe([u.log_path], inv.secrets, lines.pipe("err") if lines else None) as err:
                proc = run_process(argv, cwd=u.ws, env=inv.env, stdout_path=out.path, stderr_path=err.path,
                                   timeout=spec.timeout, cancel=cancel, stdin_path=inv.stdin,
                                   stall_timeout=inv.stall_timeout,
                                   last_output=lambda: max(out.last_output, err.last_output), on_start=go)
        except FileNotFoundError as exc:
            msg = f"agent executable not found: {exc.filename or argv[0]}"
            u.log(msg + "\n")
            return None, AgentOutcome("error", False, msg)
        finally:
            process.reap_unit(u.settings.run_id, spec.uid, since=since)  # what it left in sessions of its own
            if lines is not None:
                lines.close()  # the count of the last second's skipped lines
    if proc.timed_out:
        return proc, AgentOutcome("timeout", False, f"killed after {spec.timeout:g}s")
    if proc.cancelled:
        return proc, AgentOutcome("interrupted", False, "run interrupted")
    if proc.stalled:
        return proc, agents.stalled(inv, out.text, err.text)
    # The parser sees the masked text, so nothing derived from it (messages, journal, events) holds a secret.
    return proc, inv.parse(out.text, err.text, proc.exit_code)


RESUME_PREFIX = ("Your previous session on this task was interrupted; the work it had done is in the working tree. "
                 "Continue where you left off. The task:\n")
RESUME_PREFIX_NOTHING_SAVED = ("Your previous session on this task was interrupted before it changed any file. "
                               "Continue where you left off. The task:\n")


def restore(ws: Path, commit: str | None) -> bool:
    """Put an interrupted unit's saved work back in the worktree (uncommitted). True only when it is there:
    the agent is never told its work is in the tree when it is not."""
    if not commit or not gitops.try_rev(ws, f"{commit}^{{commit}}"):
        return False
    gitops.git(ws, "checkout", commit, "--", ".")
    gitops.git(ws, "reset", "--quiet")
    return True


# Process-wide: agents of every worker this process runs share one cap and one start spacing. On the local
# backend that is the whole run; a remote worker process applies them to what it runs (per host slot).
_slot_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}
_start_lock = threading.Lock()
_last_start = 0.0


@contextmanager
def agent_slot(limit: int | None, stagger: float, cancel: threading.Event) -> Iterator[Callable[[], None] | None]:
    """Hold one of ``limit`` agent slots; with ``stagger``, the agent starts at least ``stagger`` s after the
    previous agent process started. Yields the callback to call once the process exists (the next start is
    spaced from that moment: what the provider sees), or None when the run is cancelled while waiting."""
    sem = None
    if limit:
        with _slot_lock:
            sem = _slots.setdefault(limit, threading.BoundedSemaphore(limit))
        while not sem.acquire(timeout=0.1):
            if cancel.is_set():
                yield None
                return
    held = False

    def started() -> None:
        nonlocal held
        global _last_start
        if held:
            _last_start = time.monotonic()
            held = False
            _start_lock.release()

    try:
        if stagger > 0:  # providers rate-limit bursts of new sessions: space the starts out
            _start_lock.acquire()  # held until this agent's process exists (or it never starts)
            held = True
            wait = _last_start + stagger - time.monotonic()
            if wait > 0:
                cancel.wait(wait)
        yield None if cancel.is_set() else started
    finally:
        started()
        if sem is not None:
            sem.release()
