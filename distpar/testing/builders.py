"""Builders shared by the tests, the benchmarks and the demo: git repositories and plans for the fake agent."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distpar.infra.gitops import git_env

IDENTITY = {
    "GIT_AUTHOR_NAME": "distpar tests",
    "GIT_AUTHOR_EMAIL": "tests@distpar.invalid",
    "GIT_COMMITTER_NAME": "distpar tests",
    "GIT_COMMITTER_EMAIL": "tests@distpar.invalid",
}


def sh_git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, env=git_env(IDENTITY), capture_output=True, text=True,
                          check=True)
    return proc.stdout.strip()


def make_repo(path: Path, files: Mapping[str, str] | None = None, branch: str = "main") -> Path:
    """A git repository with one commit holding ``files`` (a README by default)."""
    path.mkdir(parents=True, exist_ok=True)
    sh_git(path, "init", "--quiet", "-b", branch)
    for name, text in (files or {"README.md": "# demo\n"}).items():
        p = path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    sh_git(path, "add", "--all")
    sh_git(path, "commit", "--quiet", "-m", "initial commit")
    return path


def fake_batch(
    bid: Any,
    *,
    writes: Mapping[str, str] | None = None,
    sleep: float = 0.0,
    extra: Iterable[str] = (),
    description: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A manifest batch whose prompt tells the fake agent what to do."""
    lines = [f"Batch {bid}: do the work."]
    if sleep:
        lines.append(f"@fake sleep {sleep:g}")
    for path, text in (writes or {}).items():
        lines.append(f"@fake write {json.dumps(path)} {json.dumps(text)}")
    lines.extend(extra)
    return {
        "id": bid,
        "description": description if description is not None else f"batch {bid}",
        "parallel": False,
        "agents": [{"subagent_type": "general-purpose", "prompt": "\n".join(lines)}],
        **fields,
    }


def plan_text(batches: list[dict[str, Any]], plan_id: str = "test-plan", preamble: str = "# Plan\n",
              independent: bool = True) -> str:
    """A plan file's text. ``independent``: the plan says its batches need not wait for each other (distpar's
    plan-level field; ``depends_on`` still holds), which is what most tests mean; ``False`` leaves the CAST
    default, ordered stages."""
    manifest: dict[str, Any] = {"plan_id": plan_id, **({"independent": True} if independent else {}),
                                "batches": batches}
    return f"{preamble}\n```json dispatch\n{json.dumps(manifest, indent=2)}\n```\n"


def write_plan(path: Path, batches: list[dict[str, Any]], plan_id: str = "test-plan", independent: bool = True) -> Path:
    path.write_text(plan_text(batches, plan_id, independent=independent))
    return path


def independent_plan(n: int, sleep: float = 0.0) -> list[dict[str, Any]]:
    """``n`` batches that each write their own file (no conflicts), optionally taking ``sleep`` seconds."""
    return [fake_batch(i, writes={f"src/mod{i}.py": f"VALUE = {i}\n"}, sleep=sleep) for i in range(1, n + 1)]


def tree_files(repo: Path, rev: str = "HEAD") -> dict[str, str]:
    """Path -> blob id of every file in ``rev``: equal dicts mean equal trees."""
    out = sh_git(repo, "ls-tree", "-r", rev)
    return {line.split("\t", 1)[1]: line.split()[2] for line in out.splitlines()}


def wait_for_sshd(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Wait until an sshd started on 127.0.0.1:``port`` greets; kill it and raise with its log if it never does."""
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH"):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"sshd on port {port} did not start: {text[-500:]}")
        time.sleep(0.05)
