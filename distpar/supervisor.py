"""The remote half of the SSH backend: runs one worker on a host under a watchdog, so that nothing is left
running there whatever happens to the coordinator or the connection.

    PYTHONPATH=<unpacked distpar> python3 -m distpar.supervisor supervise TAG   (in the host's run directory)

Stdin: the segment spec as one JSON line (the forwarded secrets travel only there), then commands:
``cancel`` sends the worker SIGTERM (it stops its agents, saves their work and returns its result), ``kill``
stops it and SIGKILLs everything it started after a grace period; the end of stdin (the coordinator died, the
connection dropped, the channel was closed) does the same, with a longer grace so the work is saved on the
host. Stdout: the worker's result. The worker runs in its own session; its pid is kept in ``proc/TAG.pid``.

``python3 -m distpar.supervisor reap RUN_DIR [TAG]`` SIGKILLs what a run (or one segment) left on the host,
for when a supervisor was itself killed. Standard library only: this is what runs on every host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

RUN_VAR = "DISTPAR_SSH_SEGMENT"  # RUN_DIR:TAG, in the environment of every process a segment starts on a host
KILL_GRACE = 5.0  # SIGTERM -> SIGKILL of everything the worker started
ORPHAN_GRACE = 10.0  # the channel closed under us: let the worker save its agents' work, then kill
STARTUP = 1.0  # a worker younger than this gets its SIGTERM a little later (its handlers are not set yet)


def supervise(tag: str) -> int:
    """Run one worker under a watchdog (on the host, in the run directory). Stdin: the spec JSON on one line,
    then commands (``cancel``, ``kill``); end of input means the coordinator is gone. Stdout: the result."""
    lines = _lines(0)  # raw reads: a thread blocked in sys.stdin would abort the interpreter at exit
    spec = next(lines, b"")
    if not spec.strip():
        print("distpar supervisor: no spec on stdin", file=sys.stderr)
        return 2
    proc_dir = Path("proc")
    proc_dir.mkdir(exist_ok=True)
    pid_file, err_path = proc_dir / f"{tag}.pid", proc_dir / f"{tag}.err"
    with open(err_path, "wb") as err:
        worker = subprocess.Popen([sys.executable, "-m", "distpar.worker", "/dev/stdin"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, start_new_session=True, close_fds=True)
    started = time.time()
    pid_file.write_text(f"{worker.pid}\n")
    assert worker.stdin is not None and worker.stdout is not None
    with contextlib.suppress(BrokenPipeError):
        worker.stdin.write(spec + b"\n")
        worker.stdin.close()
    del spec

    def stop(grace: float) -> None:
        threading.Thread(target=_terminate, args=(worker, grace), daemon=True).start()

    def watch() -> None:
        for line in lines:
            if line.strip() == b"cancel":
                # A worker that has not yet installed its handlers would die of SIGTERM, result and all.
                time.sleep(max(0.0, started + STARTUP - time.time()))
                _signal(worker.pid, signal.SIGTERM, group=False)
            elif line.strip() == b"kill":
                stop(KILL_GRACE)
        stop(ORPHAN_GRACE)

    threading.Thread(target=watch, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop(KILL_GRACE))
    out = worker.stdout.read()
    code = worker.wait()
    _signal(worker.pid, signal.SIGKILL)  # whatever the worker left in its group
    pid_file.unlink(missing_ok=True)
    code = code if code >= 0 else 128 - code
    try:
        os.write(1, out)
        if code not in (0, 130):
            os.write(2, err_path.read_bytes()[-4000:])
    except OSError:  # the channel is gone: the work stays in the run directory
        code = code or 1
    os._exit(code)  # not a normal exit: the watch thread may still sit in a read


def reap(run_dir: str, tag: str = "") -> int:
    """``python3 -m distpar.backends.ssh reap RUN_DIR [TAG]``: SIGKILL every process of this run (or of one
    segment) still on the host: the recorded workers' groups and, on Linux, whatever carries the segment's
    mark in its environment. For when a supervisor could not do it itself."""
    for pid_file in Path(run_dir, "proc").glob(f"{tag or '*'}.pid"):
        with contextlib.suppress(OSError, ValueError):
            _signal(int(pid_file.read_text()), signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
    needle = f"{RUN_VAR}={run_dir}:{tag}".encode()
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if any(v == needle if tag else v.startswith(needle) for v in env):
                _signal(int(entry), signal.SIGKILL, group=False)
    return 0


def _lines(fd: int) -> Iterator[bytes]:
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


def _terminate(worker: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the worker (it stops its agents and saves their work); after ``grace``, SIGKILL everything it
    started, agents' own process groups included (found before the worker dies and they are reparented)."""
    if worker.poll() is not None:
        return
    tree = _descendants(worker.pid)
    _signal(worker.pid, signal.SIGTERM, group=False)
    deadline = time.time() + grace
    while worker.poll() is None and time.time() < deadline:
        tree |= _descendants(worker.pid)
        time.sleep(0.1)
    tree |= _descendants(worker.pid)
    for pid in tree:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        _signal(pid, signal.SIGKILL, group=False)
    _signal(worker.pid, signal.SIGKILL)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
    else:
        ps = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True)
        for line in ps.stdout.splitlines():
            pid, ppid = (int(x) for x in line.split())
            children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int, group: bool = True) -> None:
    with contextlib.suppress(OSError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2]))
    if sys.argv[1:2] == ["reap"] and len(sys.argv) in (3, 4):
        sys.exit(reap(*sys.argv[2:]))
    print("usage: python3 -m distpar.supervisor supervise TAG | reap RUN_DIR [TAG]", file=sys.stderr)
    sys.exit(2)
