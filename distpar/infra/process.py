"""Child processes done tidily: own session, stdin from /dev/null, time limit, whole-group kill."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GRACE_SECONDS = 3.0
POLL_SECONDS = 0.1  # how often a running process's time limit, stall and cancel are looked at


@dataclass(frozen=True, slots=True)
class ProcessResult:
    exit_code: int | None  # None when killed by distpar
    timed_out: bool
    cancelled: bool
    started: float
    ended: float
    stalled: bool = False  # killed after ``stall_timeout`` seconds without output


def run_process(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout: float | None,
    cancel: threading.Event | None = None,
    stdin_path: Path | None = None,
    stall_timeout: float | None = None,
    last_output: Callable[[], float] | None = None,
    on_start: Callable[[], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` (no shell) to completion, a time limit, or ``cancel``; never leave its group behind.
    ``stdin_path``: a file on stdin (else /dev/null). ``stall_timeout``: stop it once ``last_output()`` (the
    epoch of its last output) is that many seconds old. ``on_start``: called once the process exists."""
    started = time.time()
    with (
        open(stdout_path, "ab") as out,
        open(stderr_path, "ab") as err,
        open(stdin_path or os.devnull, "rb") as stdin,
        subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=dict(env),
            stdin=stdin,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        ) as proc,
    ):
        if on_start is not None:
            on_start()
        deadline = started + timeout if timeout else None
        timed_out = cancelled = stalled = False
        exited = _exit_watch(proc.pid)
        try:
            while True:
                if exited is not None:  # woken the moment it exits; else every POLL_SECONDS to look around
                    wait = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.time()))
                    if select.select([exited], [], [], wait)[0]:
                        proc.wait()
                        break
                else:
                    try:
                        proc.wait(timeout=POLL_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif deadline is not None and time.time() >= deadline:
                    timed_out = True
                elif stall_timeout and time.time() - max(started, last_output() if last_output else 0) > stall_timeout:
                    stalled = True
                if cancelled or timed_out or stalled:
                    kill_group(proc.pid, proc)
                    break
        except BaseException:  # KeyboardInterrupt, a Ray task cancelled, ...: never leave the group behind
            kill_group(proc.pid, proc, grace=0.5)
            raise
        finally:
            if exited is not None:
                os.close(exited)
        # Whatever the agent left running in its session (a dev server, a stray child) goes too.
        kill_group(proc.pid, None, grace=0.0)
        code = None if (timed_out or cancelled or stalled) else proc.returncode
    return ProcessResult(code, timed_out, cancelled, started, time.time(), stalled)


def _exit_watch(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` exits (Linux's pidfd), or None where there is none:
    a wait that needs no polling."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


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


# --- processes of runs (Linux /proc) -----------------------------------------------------------------


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), where /proc tells; None otherwise."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    boot = _boot_time()
    if boot is None:
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int, recorded_at: float | None = None) -> bool:
    """Whether ``pid`` runs and is not a zombie; with ``recorded_at``, also that it is the process recorded
    then and not a later one that reused the number."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] in "ZX":
            return False
    except (OSError, IndexError):
        pass
    if recorded_at is not None:
        started = process_start(pid)
        if started is not None and started > recorded_at + 2.0:
            return False
    return True


def agent_processes() -> dict[str, list[int]]:
    """Run id -> pids of processes whose environment names that run (agents distpar started)."""
    found: dict[str, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    me = os.getpid()
    needle = b"\0DISTPAR_RUN_ID="
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        i = env.find(needle)
        if i < 0 or not pid_alive(int(entry.name)):
            continue
        value = env[i + len(needle):].split(b"\0", 1)[0].decode(errors="replace")
        found.setdefault(value, []).append(int(entry.name))
    return found


def kill_process_group(pid: int, grace: float = 2.0) -> None:
    """TERM the agent's process group (its own session, so nothing else), KILL what is left after ``grace``."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    target_group = pgid != os.getpgid(0)
    send = (lambda sig: os.killpg(pgid, sig)) if target_group else (lambda sig: os.kill(pid, sig))
    try:
        send(signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace
    while time.time() < deadline and pid_alive(pid):
        time.sleep(0.05)
    try:
        send(signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- what an agent leaves behind outside its process group (Linux) -----------------------------------

PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``prctl``), so that a child an agent
    moved into a session of its own (``setsid``) stays under this process instead of going to init. Once per
    process; False where the platform has no such thing."""
    global _subreaper
    if _subreaper:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    return _subreaper


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, process group, start time in clock ticks since boot) of ``pid`` from /proc; None when
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc gives a process's start time in (0 where unknown)."""
    try:
        return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0


def unit_processes(run_id: str, batch_id: str, since: int = 0) -> list[int]:
    """Live processes whose environment names this run and batch: what an agent started, wherever it went.
    ``since`` (``boot_ticks()`` before the agent started): older processes are not looked at (reading a
    process's environment is dear, and a machine running a Ray node has hundreds)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    me = os.getpid()
    marks = (f"DISTPAR_RUN_ID={run_id}".encode(), f"DISTPAR_BATCH_ID={batch_id}".encode())
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if since and (st := _stat(int(entry.name))) is not None and st[3] < since:
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(m in env for m in marks) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def reap_unit(run_id: str, batch_id: str, grace: float = 1.0, since: int = 0) -> list[int]:
    """After a batch's agent ended: stop every process it left running, also those that left its process
    group (TERM, ``grace``, KILL; a group leader with its group), and reap the ones that came back to this
    process as a subreaper. Returns the pids that were still running. ``since``: see ``unit_processes``."""
    pids = unit_processes(run_id, batch_id, since)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            st = _stat(pid)
            if st is None:
                continue
            try:
                os.killpg(pid, sig) if st[2] == pid else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + (grace if sig == signal.SIGTERM else 1.0)
        while time.time() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.02)
    reap_orphans(pids)
    return pids


def reap_orphans(known: Iterable[int] = ()) -> None:
    """Collect the exit status of orphans handed to this process as a subreaper: ``known`` pids, and zombie
    children that are members (not leaders) of another process group, which no ``Popen`` here waits for
    (distpar's own children are leaders of their session, or in this process's group)."""
    me, mine = os.getpid(), os.getpgrp()
    candidates = set(known)
    if _subreaper and Path("/proc").is_dir():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                st = _stat(int(entry.name))
                if st and st[0] == "Z" and st[1] == me and st[2] not in (int(entry.name), mine):
                    candidates.add(int(entry.name))
    for pid in candidates:
        st = _stat(pid)
        if st is None or st[1] != me:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def on_signals(handler: Callable[[], None]) -> Callable[[], None]:
    """SIGINT and SIGTERM call ``handler`` from now on (in the main thread only: elsewhere nothing changes);
    returns what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, lambda *_: handler()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore
