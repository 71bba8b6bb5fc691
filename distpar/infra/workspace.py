"""A worker's workspace made ready to work in, once per worker: the ignored files the work needs
(``.worktreeinclude``), a setup command (``--setup``), a block of ports of its own; and the gates run on work:
``--verify`` after each batch in its worktree, ``--verify-merged`` on the merged tree before the target moves.

User commands (setup, verify) are the user's own shell lines (``npm ci && npm run build``): they run under
``/bin/sh -c`` in their own process group, with a time limit, their output in a log. Prompts never do.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from distpar.infra import gitops
from distpar.infra.capture import MaskedPipe
from distpar.infra.process import run_process

INCLUDE_FILE = ".worktreeinclude"
PORTS_PER_WORKER = 10
PORT_FIRST = 20000
PORT_LAST = 60000
HOOK_TIMEOUT = 1800.0
TAIL = 20


@dataclass(frozen=True, slots=True)
class HookResult:
    """How a user command went: ok, exit code, seconds, the tail of its output."""

    name: str
    ok: bool
    exit_code: int | None
    seconds: float
    tail: str
    log_path: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> HookResult:
        return cls(**d)  # type: ignore[arg-type]

    def describe(self) -> str:
        how = "timed out" if self.exit_code is None else f"exit {self.exit_code}"
        return f"{self.name} failed ({how}, {self.seconds:.1f}s):\n{self.tail}"


# --- on the coordinator ----------------------------------------------------------------------------------


def included_files(repo: Path) -> list[str]:
    """The ignored files that ``.worktreeinclude`` (gitignore patterns, Claude Code's convention) asks to be
    copied into every worktree: untracked, ignored by the repository, and matched by a pattern there."""
    patterns = repo / INCLUDE_FILE
    if not patterns.is_file():
        return []
    ignored = set(gitops.out(repo, "ls-files", "--others", "--ignored", "--exclude-standard", "-z").split("\0"))
    wanted = gitops.out(repo, "ls-files", "--others", "--ignored", f"--exclude-from={patterns}", "-z").split("\0")
    return sorted(f for f in wanted if f and f in ignored and (repo / f).is_file())


def pack_files(repo: Path, files: list[str]) -> dict[str, str]:
    """The files' contents for a remote worker (base64), when the user lets them travel (they often hold
    secrets: never logged, never journaled)."""
    return {f: base64.b64encode((repo / f).read_bytes()).decode() for f in files}


# --- on the worker ---------------------------------------------------------------------------------------


def populate(ws: Path, source_root: str | None, files: tuple[str, ...], packed: dict[str, str]) -> list[str]:
    """Copy the included files into a new workspace: from the user's checkout (local) or the packed contents
    that came with the unit (remote). Returns the paths written."""
    done = []
    for rel in files:
        dest = ws / rel
        if dest.resolve().is_relative_to(ws.resolve()) is False:
            continue  # a pattern can never place a file outside the workspace
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel in packed:
            dest.write_bytes(base64.b64decode(packed[rel]))
        elif source_root and (Path(source_root) / rel).is_file():
            shutil.copy2(Path(source_root) / rel, dest)
        else:
            continue
        done.append(rel)
    return done


def free_port_block(worker: int, count: int = PORTS_PER_WORKER) -> int:
    """The first port of ``count`` consecutive free ports on this host for worker ``worker``. Blocks of
    different workers never overlap (each worker searches its own stride of the range)."""
    stride = count * 64
    for base in range(PORT_FIRST + (worker % 64) * count, PORT_LAST - count, stride):
        if all(_free(p) for p in range(base, base + count)):
            return base
    return PORT_FIRST + (worker % 64) * count


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def state_file(ws: Path) -> Path:
    """Where a workspace remembers what its preparation did (in its git dir: never committed)."""
    return gitops.git_dir(ws) / "distpar-workspace.json"


def load_state(ws: Path) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads(state_file(ws).read_text())
    except (OSError, ValueError, Exception):
        return None
    return data


def save_state(ws: Path, state: dict[str, object]) -> None:
    state_file(ws).write_text(json.dumps(state))


def run_hook(name: str, command: str, cwd: Path, env: dict[str, str], log_path: Path, secrets: tuple[str, ...],
             cancel: threading.Event | None = None, timeout: float = HOOK_TIMEOUT) -> HookResult:
    """Run a user's command (``sh -c``) in ``cwd``; its masked output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"--- distpar: {name}: {command}\n")
    t0 = time.time()
    with MaskedPipe([log_path], secrets) as out, MaskedPipe([log_path], secrets) as err:
        proc = run_process(["/bin/sh", "-c", command], cwd=cwd, env=env, stdout_path=out.path,
                           stderr_path=err.path, timeout=timeout, cancel=cancel)
    seconds = time.time() - t0
    ok = proc.exit_code == 0
    with log_path.open("a") as log:
        log.write(f"--- distpar: {name} {'ok' if ok else 'failed'}: exit {proc.exit_code}, {seconds:.1f}s\n")
    tail = "\n".join((out.text + err.text).splitlines()[-TAIL:])
    return HookResult(name, ok, proc.exit_code, seconds, tail, str(log_path))


def verify_merged(repo: Path, head: str, where: Path, command: str, setup: str | None, include: list[str],
                  log_path: Path, cancel: threading.Event | None = None) -> HookResult:
    """Run the ``--verify-merged`` gate on ``head`` (the merged integration tree) in a worktree of its own,
    made ready like a worker's (included files, setup), removed afterwards whatever happens."""
    if where.exists():
        gitops.worktree_remove(repo, where)
    where.parent.mkdir(parents=True, exist_ok=True)
    with gitops.repo_lock(repo, "worktree"):
        gitops.git(repo, "worktree", "add", "--quiet", "--detach", str(where), head)
    try:
        populate(where, str(repo), tuple(include), {})
        env = {**os.environ, "DISTPAR_WORKTREE": str(where),
               "DISTPAR_PORT_BASE": str(free_port_block(63)), "DISTPAR_PORT_COUNT": str(PORTS_PER_WORKER)}
        if setup:
            prepared = run_hook("setup", setup, where, env, log_path, (), cancel)
            if not prepared.ok:
                return HookResult("verify-merged (its setup)", False, prepared.exit_code, prepared.seconds,
                                  prepared.tail, str(log_path))
        gate = run_hook("verify-merged", command, where, env, log_path, (), cancel)
        return gate
    finally:
        gitops.worktree_remove(repo, where)


READY = "distpar-ready"  # in a workspace's git dir: its files are fully checked out at the unit's base


def workspace_ready(ws: Path) -> bool:
    """Whether ``ws`` was fully prepared: only then can it hold an agent's work (cleanup snapshots only those)."""
    try:
        return (gitops.git_dir(ws) / READY).exists()
    except Exception:
        return False
