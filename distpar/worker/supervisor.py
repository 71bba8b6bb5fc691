"""The remote half of the SSH backend: one long-lived worker per slot on a host, under a watchdog, so that
nothing is left running there whatever happens to the coordinator or the connection.

    PYTHONPATH=<unpacked distpar> python3 -m distpar.worker.supervisor serve TAG   (in the host's run directory)

starts ``python3 -m distpar.worker --serve`` in its own session (its pid in ``proc/TAG.pid``) and relays: the
channel's stdin goes to the worker line by line (JSON unit specs, which hold the forwarded secrets, and
``{"op": "cancel"}``), the worker's stdout (JSON events and results, as they happen) goes back on the channel.
Two things the supervisor does itself: a ``kill`` line stops the worker and SIGKILLs everything it started after
a grace period; the end of stdin (the coordinator died, the connection dropped, the channel was closed) closes
the worker's input (it stops its agents and saves their work on the host) and kills what is left after a longer
grace.

``python3 -m distpar.worker.supervisor reap RUN_DIR [TAG]`` SIGKILLs what a run (or one channel) left on the host,
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

RUN_VAR = "DISTPAR_SSH_CHANNEL"  # RUN_DIR:TAG, in the environment of every process a channel starts on a host
KILL_GRACE = 5.0  # SIGTERM -> SIGKILL of everything the worker started
ORPHAN_GRACE = 10.0  # the channel closed under us: let the worker save its agents' work, then kill
RELAY_WAIT = 5.0  # after the worker exits: how long its last output may take to reach the channel


def serve(tag: str) -> int:
    """Run one persistent worker under a watchdog (on the host, in the run directory)."""
    proc_dir = Path("proc")
    proc_dir.mkdir(exist_ok=True)
    pid_file, err_path = proc_dir / f"{tag}.pid", proc_dir / f"{tag}.err"
    with open(err_path, "wb") as err:
        worker = subprocess.Popen([sys.executable, "-m", "distpar.worker", "--serve"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, start_new_session=True, close_fds=True)
    pid_file.write_text(f"{worker.pid}\n")
    assert worker.stdin is not None and worker.stdout is not None
    to_worker, from_worker = worker.stdin.fileno(), worker.stdout.fileno()

    def stop(grace: float) -> None:
        threading.Thread(target=_terminate, args=(worker, grace), daemon=True).start()

    def feed() -> None:
        for line in read_lines(0):  # raw reads: a thread blocked in sys.stdin would abort the interpreter at exit
            if line.strip() == b"kill":
                stop(KILL_GRACE)
                continue
            with contextlib.suppress(OSError):
                os.write(to_worker, line + b"\n")
        with contextlib.suppress(OSError):
            worker.stdin.close()  # type: ignore[union-attr]  # the worker stops its unit and saves its work
        stop(ORPHAN_GRACE)

    def relay() -> None:
        lost = False
        while chunk := _read(from_worker):
            if not lost:
                try:
                    os.write(1, chunk)
                except OSError:  # the channel is gone: keep draining so the worker never blocks on its output
                    lost = True

    threading.Thread(target=feed, daemon=True).start()
    out = threading.Thread(target=relay, daemon=True)
    out.start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop(KILL_GRACE))
    code = worker.wait()
    out.join(RELAY_WAIT)
    _signal(worker.pid, signal.SIGKILL)  # whatever the worker left in its group
    pid_file.unlink(missing_ok=True)
    code = code if code >= 0 else 128 - code
    if code not in (0, 130):
        with contextlib.suppress(OSError):
            os.write(2, err_path.read_bytes()[-4000:])
    os._exit(code)  # not a normal exit: the feed thread may still sit in a read


def reap(run_dir: str, tag: str = "") -> int:
    """``python3 -m distpar.worker.supervisor reap RUN_DIR [TAG]``: SIGKILL every process of this run (or of one
    channel) still on the host: the recorded workers' groups and, on Linux, whatever carries the channel's
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


def read_lines(fd: int) -> Iterator[bytes]:
    """The lines of a file descriptor, read raw (without sys.stdin's buffer and its lock); ends at EOF."""
    buf = b""
    while True:
        chunk = _read(fd)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


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
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2]))
    if sys.argv[1:2] == ["reap"] and len(sys.argv) in (3, 4):
        sys.exit(reap(*sys.argv[2:]))
    print("usage: python3 -m distpar.worker.supervisor serve TAG | reap RUN_DIR [TAG]", file=sys.stderr)
    sys.exit(2)
