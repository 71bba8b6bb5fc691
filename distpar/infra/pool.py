"""Workspaces kept between runs (``--reuse-workspaces``): a pool per repository on each machine.

A pool is a directory of workspaces ``ws-<n>``, each with a lock file ``ws-<n>.lock`` beside it. A worker takes one
by locking its file (``flock``, not blocking: a workspace another run holds is passed over), so two runs never share
one, and a lock never outlives the process that took it (a killed run leaves nothing to clear by hand). The lock
file's mtime says when the workspace was last given back; the warmest free one is taken first. A workspace whose
marker ``ws-<n>.busy`` says its work never came back to a coordinator is kept, never taken (see
``distpar.backends.ray``). What is idle beyond the caps (count, age, bytes) is removed, least recently used first.

This module only hands out directories and locks; what a workspace must be to be reused (a sound repository, no
uncommitted work) is the worker's judgement (``distpar.worker.unit``), and ``distpar clean --workspaces`` removes
the pool.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SLOT = re.compile(r"ws-(\d+)")
LOCAL_POOL = ".pool"  # under a repository's worktrees base (hidden: never taken for a run's directory)


@dataclass(frozen=True)
class Caps:
    """What a pool keeps idle: at most ``count`` workspaces, none unused for more than ``age`` seconds, at most
    ``size`` bytes in all."""

    count: int = 16
    age: float = 14 * 86400.0
    size: int = 20 * 2**30


@dataclass
class Lease:
    """A workspace taken from a pool: ``how`` it came (``new``, ``reused``, ``rebuilt``) and why."""

    path: Path
    how: str
    reason: str = ""
    owner: str = ""
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        """Still held (not given back)."""
        return self._lock is not None


_held: dict[Path, Lease] = {}  # this process's leases, by workspace
_guard = threading.Lock()


def _lock_path(ws: Path) -> Path:
    return ws.with_name(ws.name + ".lock")


def busy_marker(ws: Path) -> Path:
    return ws.with_name(ws.name + ".busy")


def _try_lock(ws: Path) -> IO[str] | None:
    f = open(_lock_path(ws), "a")  # noqa: SIM115 - held for the lease
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _last_used(ws: Path) -> float:
    try:
        return _lock_path(ws).stat().st_mtime
    except OSError:
        return 0.0


def slots(pool: Path) -> list[Path]:
    """The pool's workspaces, the most recently given back first."""
    if not pool.is_dir():
        return []
    found = [p for p in pool.iterdir() if SLOT.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=_last_used, reverse=True)


def acquire(pool: Path, owner: str, usable: Callable[[Path], str] = lambda _ws: "") -> Lease:
    """Take a workspace of ``pool`` for ``owner`` (a run): the warmest free one, or a new one. ``usable(path)``
    returns why a free workspace cannot be reused ('' when it can): such a one is removed and made anew in place
    (``how="rebuilt"``). The caller makes the repository in a lease that is not ``reused``."""
    pool.mkdir(parents=True, exist_ok=True)
    kept: list[str] = []
    with _guard:
        for ws in slots(pool):
            if ws in _held:
                continue
            lock = _try_lock(ws)
            if lock is None:
                continue  # another run's
            if busy_marker(ws).exists():
                lock.close()
                kept.append(f"{ws.name} holds work that never came back (kept, not reused)")
                continue
            why = usable(ws)
            if why:
                shutil.rmtree(ws, ignore_errors=True)
                return _hold(Lease(ws, "rebuilt", "; ".join([*kept, f"{ws.name} {why}: made anew"]), owner, lock))
            return _hold(Lease(ws, "reused", "; ".join(kept), owner, lock))
        taken = {int(m.group(1)) for p in pool.iterdir() if (m := SLOT.fullmatch(p.name.removesuffix(".lock")))}
        n = 1
        for _ in range(10_000):
            ws = pool / f"ws-{n}"
            if n not in taken or not ws.exists():
                lock = _try_lock(ws)
                if lock is not None and not ws.exists():
                    reason = "; ".join(kept) or ("the pool had no free workspace" if taken else "the pool was empty")
                    return _hold(Lease(ws, "new", reason, owner, lock))
                if lock is not None:
                    lock.close()
            n += 1
        raise RuntimeError(f"no free workspace name in {pool}")


def _hold(lease: Lease) -> Lease:
    _held[lease.path] = lease
    return lease


def held(owner: str) -> list[Lease]:
    """This process's leases for ``owner``."""
    with _guard:
        return [lease for lease in _held.values() if lease.owner == owner]


def release(lease: Lease) -> None:
    """Give a workspace back to its pool (its lock file's mtime: when it was last used)."""
    with _guard:
        _held.pop(lease.path, None)
        if lease._lock is not None:
            try:
                os.utime(_lock_path(lease.path))
            except OSError:
                pass
            lease._lock.close()
            lease._lock = None


def release_all(owner: str) -> None:
    for lease in held(owner):
        release(lease)


def size_of(path: Path) -> int:
    total = 0
    stack = [path]
    for _ in range(10_000_000):
        if not stack:
            break
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    else:
                        try:
                            total += e.stat(follow_symlinks=False).st_size
                        except OSError:
                            pass
        except OSError:
            continue
    return total


def prune(pool: Path, caps: Caps, now: float | None = None) -> list[Path]:
    """Remove the workspaces beyond ``caps``, least recently used first; returns them. A workspace in use
    (locked: it is only tried when it is to go, so runs taking workspaces meanwhile are never turned away) or
    holding work that never came back is never touched."""
    now = time.time() if now is None else now
    with _guard:
        candidates = [ws for ws in slots(pool) if ws not in _held]  # the most recently used first
    victims: list[Path] = []
    total = 0
    for i, ws in enumerate(candidates):
        total += size_of(ws) if caps.size else 0
        if i >= caps.count or now - _last_used(ws) > caps.age or total > caps.size:
            victims.append(ws)
    removed: list[Path] = []
    for ws in victims:
        with _guard:
            lock = None if ws in _held or busy_marker(ws).exists() else _try_lock(ws)
        if lock is None:
            continue
        try:
            shutil.rmtree(ws, ignore_errors=True)
            removed.append(ws)
        finally:
            lock.close()
    return removed


def take(ws: Path) -> Lease | None:
    """Hold one workspace of a pool as it is (to inspect or remove it), or None when a run holds it."""
    with _guard:
        if ws in _held:
            return None
        lock = _try_lock(ws)
        return None if lock is None else _hold(Lease(ws, "taken", _lock=lock))
