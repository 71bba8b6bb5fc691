"""Child processes done tidily: own session, stdin from /dev/null, time limit, whole-group kill."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GRACE_SECONDS = 3.0
POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ProcessResult:
    exit_code: int | None  # None when killed by distpar
    timed_out: bool
    cancelled: bool
    started: float
    ended: float


def run_process(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout: float | None,
    cancel: threading.Event | None = None,
) -> ProcessResult:
    """Run ``argv`` (no shell) to completion, a time limit, or ``cancel``; never leave its group behind."""
    started = time.time()
    with (
        open(stdout_path, "ab") as out,
        open(stderr_path, "ab") as err,
        subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        ) as proc,
    ):
        deadline = started + timeout if timeout else None
        timed_out = cancelled = False
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif deadline is not None and time.time() >= deadline:
                    timed_out = True
                if cancelled or timed_out:
                    kill_group(proc.pid, proc)
                    break
        except BaseException:  # KeyboardInterrupt, a Ray task cancelled, ...: never leave the group behind
            kill_group(proc.pid, proc, grace=0.5)
            raise
        # Whatever the agent left running in its session (a dev server, a stray child) goes too.
        kill_group(proc.pid, None, grace=0.0)
        code = None if (timed_out or cancelled) else proc.returncode
    return ProcessResult(code, timed_out, cancelled, started, time.time())


def kill_group(pgid: int, proc: subprocess.Popen[bytes] | None, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the process group, wait up to ``grace`` for the leader, then SIGKILL what is left."""
    if grace > 0:
        _signal_group(pgid, signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(min(grace, 0.2))
    _signal_group(pgid, signal.SIGKILL)
    if proc is not None:
        proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
