"""The opt-in sandbox (``--sandbox``): the agent runs under bubblewrap with the whole file system read-only
except its worktree, what git needs to commit there, a private /tmp, its own CLI's state directory and the
paths the user allows; in a pid namespace of its own, so that nothing it starts outlives it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from distpar.core.errors import UsageError
from distpar.infra import gitops

BWRAP = "bwrap"
# Where each agent CLI keeps its sessions and settings (under $HOME): writable inside the sandbox when present.
AGENT_STATE = {
    "claude": (".claude", ".claude.json", ".config/claude"),
    "codex": (".codex",),
    "gemini": (".gemini",),
    "aider": (".aider",),
}


def check() -> None:
    """Refuse ``--sandbox`` where bubblewrap is missing or cannot make a sandbox (no user namespaces)."""
    exe = shutil.which(BWRAP)
    if exe is None:
        raise UsageError("--sandbox needs bubblewrap (bwrap), which is not on PATH",
                         hint="install it (apt-get install bubblewrap) or run without --sandbox")
    proc = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
                           "--die-with-parent", "true"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=30, check=False)
    if proc.returncode != 0:
        raise UsageError(f"--sandbox: bubblewrap cannot make a sandbox here: {proc.stderr.strip()[-300:]}",
                         hint="user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone)")


def git_paths(workspace: str | Path, branch: str) -> list[Path]:
    """What a commit in ``workspace`` writes outside it: the worktree's own git directory, the object store,
    and the directory of its branch (so the agent can commit on its branch, and on no other)."""
    ws = Path(workspace)
    gd = Path(gitops.out(ws, "rev-parse", "--absolute-git-dir"))
    common = Path(gitops.out(ws, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    if gd.resolve().is_relative_to(ws.resolve()):
        return []  # a repository of its own inside the workspace (bundle or url source)
    parent = str(Path(branch).parent)
    paths = [gd, common / "objects"]
    for d in (common / "refs" / "heads" / parent, common / "logs" / "refs" / "heads" / parent):
        if parent not in ("", ".") and d.is_dir():
            paths.append(d)
    return paths


def borrowed(workspace: str | Path) -> list[Path]:
    """The object stores a workspace borrows (``objects/info/alternates``): visible, read-only, in the sandbox
    even under its private /tmp."""
    alternates = Path(workspace) / ".git" / "objects" / "info" / "alternates"
    if not alternates.is_file():
        return []
    return [Path(line) for line in alternates.read_text().splitlines() if line and not line.startswith("#")]


def wrap(argv: Sequence[str], workspace: str | Path, branch: str, preset: str, allow: Iterable[str],
         read_only: Iterable[str] = ()) -> list[str]:
    """``argv`` run under bubblewrap: writes confined to the worktree and the paths named above."""
    exe = shutil.which(BWRAP)
    if exe is None:
        raise FileNotFoundError(BWRAP)
    home = Path(os.path.expanduser("~"))
    args = [exe, "--die-with-parent", "--unshare-pid", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp"]
    for ro in [*read_only, *borrowed(workspace)]:  # visible again after /tmp was replaced (the prompt file, say)
        args += ["--ro-bind-try", str(ro), str(ro)]
    writable = [Path(workspace), *git_paths(workspace, branch),
                *(home / name for name in AGENT_STATE.get(preset, ())), *(Path(a).expanduser() for a in allow)]
    for p in writable:
        args += ["--bind-try", str(p), str(p)]
    return [*args, "--chdir", str(workspace), "--", *argv]
