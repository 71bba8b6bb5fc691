"""The one worker entry point, identical on every backend.

``run_segment(spec)`` gets the code (a worktree of a local repository, a bundle, or a git remote), puts the
stream's branch at ``spec.base``, runs the agent for each batch, commits after every batch, and returns a
``SegmentResult``. Local threads call it directly, Ray tasks call it on their node, and SSH hosts run
``python -m distpar.worker SPEC.json`` (the spec on a file, the result as JSON on stdout).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from distpar import agents, gitops
from distpar.model import AgentOutcome, BatchResult, BatchSpec, BatchStatus, SegmentResult, SegmentSpec
from distpar.process import run_process

TAIL_LINES = 20


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "_"


def node_name() -> str:
    return os.environ.get("DISTPAR_NODE") or socket.gethostname()


def run_segment(spec: SegmentSpec, cancel: threading.Event | None = None) -> SegmentResult:
    cancel = cancel or threading.Event()
    env = spec.identity.env()
    ws = Path(spec.workspace)
    log_dir = Path(spec.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    saved_ref: str | None = None

    _prepare(spec, ws, env)
    results: list[BatchResult] = []
    failed = False
    for batch in spec.batches:
        if failed or cancel.is_set():
            status = BatchStatus.INTERRUPTED if cancel.is_set() else BatchStatus.SKIPPED
            why = "the run was interrupted" if cancel.is_set() else "an earlier batch of this stream failed"
            results.append(BatchResult(batch.id, spec.stream, status, error=why, node=node_name(),
                                       attempt=spec.attempt))
            continue
        result, saved = _run_batch(spec, batch, ws, log_dir, env, cancel)
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
    )


def _prepare(spec: SegmentSpec, ws: Path, env: dict[str, str]) -> None:
    """Check out ``spec.branch`` at ``spec.base`` in ``ws``, getting the code as the source says."""
    kind, location = spec.source.kind, spec.source.location
    fresh = not (ws / ".git").exists()
    if kind == "worktree":
        if fresh:
            ws.parent.mkdir(parents=True, exist_ok=True)
            gitops.worktree_add(location, ws, spec.branch, spec.base)
            return
    elif kind in ("bundle", "url"):
        if fresh:
            ws.mkdir(parents=True, exist_ok=True)
            gitops.git(ws, "init", "--quiet")
        refspecs = ["+refs/*:refs/distpar-in/*"] if kind == "bundle" else [
            "+refs/heads/*:refs/remotes/origin/*", "+refs/distpar/*:refs/distpar/*"]
        for src in (location, *spec.source.increments):
            gitops.git(ws, "fetch", "--quiet", "--no-tags", "--force", src, *refspecs)
        if fresh:
            gitops.git(ws, "checkout", "--quiet", "-B", spec.branch, spec.base)
            return
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    # A workspace from an earlier segment (or attempt) of this stream: move its branch to the new base,
    # saving anything uncommitted first so that nothing is ever lost.
    if gitops.dirty_files(ws) or gitops.out(ws, "status", "--porcelain"):
        snap = gitops.snapshot(ws, f"distpar: uncommitted work found before segment {spec.segment}", env)
        if snap:
            gitops.update_ref(ws, f"refs/distpar/{spec.run_id}/saved/{spec.stream + 1}-prepare", snap)
    gitops.git(ws, "checkout", "--quiet", "--force", "-B", spec.branch, spec.base)
    gitops.git(ws, "clean", "-fdq")


def _run_batch(
    spec: SegmentSpec, batch: BatchSpec, ws: Path, log_dir: Path, env: dict[str, str], cancel: threading.Event
) -> tuple[BatchResult, str | None]:
    name = safe_name(batch.id)
    out_path, log_path = log_dir / f"{name}.out", log_dir / f"{name}.log"
    prompt_file = log_dir / f"{name}.prompt.md"
    prompt_file.write_text(batch.prompt)
    ctx = agents.Context(batch.prompt, prompt_file, batch.id, ws, spec.run_id, spec.stream)
    inv, parse = agents.invocation(batch.agent, ctx, os.environ, {**env, **spec.env})
    offset = out_path.stat().st_size if out_path.exists() else 0
    with log_path.open("a") as log:
        log.write(f"--- distpar: batch {batch.id}, attempt {spec.attempt}, on {node_name()}, "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n--- argv[0]: {inv.argv[0]}\n")
    before = gitops.out(ws, "rev-parse", "HEAD")
    try:
        proc = run_process(inv.argv, cwd=ws, env=inv.env, stdout_path=out_path, stderr_path=log_path,
                           timeout=batch.timeout, cancel=cancel)
    except FileNotFoundError:
        msg = f"agent executable not found: {inv.argv[0]}"
        with log_path.open("a") as log:
            log.write(msg + "\n")
        now = time.time()
        return BatchResult(batch.id, spec.stream, BatchStatus.FAILED, None, now, now, before, False, None,
                           str(log_path), msg, msg, node_name(), spec.attempt), None
    with out_path.open("rb") as f:
        f.seek(offset)
        stdout = f.read().decode("utf-8", "replace")
    with log_path.open("a") as log:
        log.write(stdout)

    if proc.timed_out:
        status, outcome = BatchStatus.TIMEOUT, AgentOutcome("timeout", False, f"killed after {batch.timeout:g}s")
    elif proc.cancelled:
        status, outcome = BatchStatus.INTERRUPTED, AgentOutcome("interrupted", False, "run interrupted")
    else:
        outcome = parse(stdout, proc.exit_code)
        status = BatchStatus.OK if outcome.ok else BatchStatus.FAILED

    saved: str | None = None
    trailer = f"\n\nDistpar-Run: {spec.run_id}\nDistpar-Batch: {batch.id}\n"
    if status.ok:
        title = f"distpar: batch {batch.id}: {batch.description}".rstrip(": ")
        gitops.commit_all(ws, title + trailer, env)
    else:
        # Failed or interrupted work stays off the branch (it is not a finished batch) but is never lost.
        snap = gitops.snapshot(ws, f"distpar: unfinished work of batch {batch.id} ({status.value})" + trailer, env)
        if snap:
            saved = f"refs/distpar/{spec.run_id}/saved/{safe_name(batch.id)}"
            gitops.update_ref(ws, saved, snap)
        gitops.git(ws, "reset", "--quiet", "--hard", before)
        gitops.git(ws, "clean", "-fdq")
    after = gitops.out(ws, "rev-parse", "HEAD")
    result = BatchResult(
        batch_id=batch.id,
        stream=spec.stream,
        status=status,
        exit_code=proc.exit_code,
        started=proc.started,
        ended=proc.ended,
        commit=after,
        changed=after != before,
        outcome=outcome,
        log_path=str(log_path),
        log_tail=_tail(log_path, spec.env),
        error="" if status.ok else (outcome.message or outcome.result_class),
        node=node_name(),
        attempt=spec.attempt,
    )
    return result, saved


def _tail(path: Path, secrets: dict[str, str]) -> str:
    lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return mask("\n".join(lines), secrets)


def mask(text: str, secrets: dict[str, str]) -> str:
    for value in secrets.values():
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _return_bundle(spec: SegmentSpec, ws: Path, head: str, saved_ref: str | None) -> str | None:
    path = ws.parent / f"{safe_name(spec.branch)}-{spec.segment}-{spec.attempt}.bundle"
    revs = [spec.branch, f"^{spec.base}"]
    if saved_ref:
        revs.append(saved_ref)
    return str(path) if gitops.bundle_create(ws, path, revs) else None


def main(argv: list[str] | None = None) -> int:
    """``python -m distpar.worker SPEC.json``: run one segment, print its result as JSON on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m distpar.worker SPEC.json", file=sys.stderr)
        return 2
    spec = SegmentSpec.from_dict(json.loads(Path(args[0]).read_text()))
    cancel = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: cancel.set())
    result = run_segment(spec, cancel)
    print(json.dumps(result.to_dict()))
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
