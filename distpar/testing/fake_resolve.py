"""The fake agent as a resolver of merge conflicts (``--on-conflict resolve``): it takes both sides' lines.

Run in a worktree where a merge stopped with conflicts (distpar's resolve step), the fake agent with no
``@fake`` command of its own resolves them as ``$FAKE_AGENT_RESOLVE`` says: ``union`` (the default: in every
conflicting file, each conflict block becomes the integrated side's lines followed by the merged side's),
``markers`` (it leaves the markers: a resolution distpar must refuse) or ``fail`` (it finishes with an error).
``$FAKE_AGENT_RESOLVE_SLEEP`` seconds: it takes that long first. ``@fake resolve-union`` does the union anywhere."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def merging() -> bool:
    """Whether the working directory is a git worktree with a merge in progress."""
    proc = subprocess.run(["git", "rev-parse", "-q", "--verify", "MERGE_HEAD"], capture_output=True, check=False)
    return proc.returncode == 0


def conflicted() -> list[str]:
    proc = subprocess.run(["git", "diff", "--name-only", "--diff-filter=U"], capture_output=True, text=True,
                          check=False)
    return [line for line in proc.stdout.splitlines() if line]


def union(text: str) -> str:
    """``text`` with each conflict block replaced by its first side's lines, then its second's (a diff3 base
    section is dropped)."""
    out: list[str] = []
    side: str | None = None  # None outside a block; "ours", "base", "theirs" inside
    for line in text.splitlines(keepends=True):
        if line.startswith("<<<<<<<"):
            side = "ours"
        elif side is not None and line.startswith("|||||||"):
            side = "base"
        elif side is not None and line.rstrip("\r\n") == "=======":
            side = "theirs"
        elif side is not None and line.startswith(">>>>>>>"):
            side = None
        elif side != "base":
            out.append(line)
    return "".join(out)


def resolve_union() -> list[str]:
    """Resolve every conflicting file by ``union``; the files it edited."""
    edited = []
    for f in conflicted():
        p = Path(f)
        if p.is_file():
            p.write_text(union(p.read_text()))
            edited.append(f)
    return edited


def act() -> tuple[str, list[str]]:
    """What ``$FAKE_AGENT_RESOLVE`` says to do: (an error message or "", the files edited)."""
    time.sleep(float(os.environ.get("FAKE_AGENT_RESOLVE_SLEEP") or 0))
    mode = os.environ.get("FAKE_AGENT_RESOLVE", "union")
    if mode == "fail":
        return "the fake resolver was told to fail", []
    if mode == "markers":
        return "", []
    return "", resolve_union()
