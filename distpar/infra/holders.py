"""Which processes hold a file (Linux ``/proc``): a write lock on it (``/proc/locks``), or the file open
(``/proc/*/fd``, the own user's only); their command lines. Bounded reads; used to say who holds a busy journal."""

from __future__ import annotations

import os
from pathlib import Path


def lockers(files: list[Path]) -> list[int]:
    """Processes other than this one holding a POSIX write lock on one of ``files``."""
    ids = set()
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        ids.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    out: list[int] = []
    try:
        with open("/proc/locks") as table:
            lines = table.readlines()[:100000]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if parts and parts[1] == "->":
            parts = parts[:1] + parts[2:]  # a waiter
        if len(parts) >= 6 and parts[3] == "WRITE" and parts[5] in ids and parts[4].isdigit():
            pid = int(parts[4])
            if pid != os.getpid() and pid not in out:
                out.append(pid)
    return out


def openers(files: list[Path]) -> list[int]:
    """Processes other than this one with one of ``files`` open."""
    names = {str(f.resolve()) for f in files}
    out: list[int] = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for pid in pids[:20000]:
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in names:
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = " ".join(f.read(300).replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        return "?"
    return cmd[:120] or "?"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
