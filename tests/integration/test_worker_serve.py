"""``python -m distpar.worker --serve`` as the SSH backend drives it, in a real process: the worker's settings come
once, then its units; settings of another version are refused for each unit that follows, with a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from distpar.core import serial
from distpar.core.model import SPEC_VERSION, AgentConfig, Source, UnitReply, UnitSpec, WorkerOptions, WorkerSettings
from distpar.infra import gitops

pytestmark = pytest.mark.integration


def serve(lines: list[dict[str, Any]], replies: int) -> list[dict[str, Any]]:
    """Feed ``lines`` to a worker process; its first ``replies`` replies (events left out), then end its input."""
    proc = subprocess.Popen([sys.executable, "-m", "distpar.worker", "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    timer = threading.Timer(120, proc.kill)  # bounded: a hung worker fails the test instead of hanging it
    timer.start()
    try:
        for line in lines:
            proc.stdin.write(json.dumps(line) + "\n")
        proc.stdin.flush()
        out: list[dict[str, Any]] = []
        while len(out) < replies:
            text = proc.stdout.readline()
            assert text, f"the worker ended early: {proc.stderr.read() if proc.stderr else ''}"
            msg = json.loads(text)
            if "event" not in msg:
                out.append(msg)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        return out
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()


def test_settings_once_then_units(repo: Path, tmp_path: Path) -> None:
    base = gitops.rev(repo, "main")
    logs = tmp_path / "logs"
    settings = WorkerSettings("r1", str(tmp_path / "ws"), str(logs), options=WorkerOptions(stagger=0.0))

    def unit(uid: str, n: int) -> dict[str, Any]:
        spec = UnitSpec(uid, f"unit {uid}", f"@fake write {uid}.txt done", AgentConfig("fake"), 60, worker=0,
                        dispatch=n, branch=f"distpar/r1/b/{uid}", base=base, source=Source("worktree", str(repo)))
        return {"op": "unit", "unit": serial.dump(spec)}

    replies = serve([{"version": SPEC_VERSION, "settings": serial.dump(settings)}, unit("a", 1), unit("b", 2)], 2)
    for uid, msg in zip(("a", "b"), replies, strict=True):
        assert msg["version"] == SPEC_VERSION, msg
        reply = serial.load(UnitReply, msg["result"])
        assert reply.result.unit_id == uid and reply.result.status.ok, reply.result.error
        # A local source: the worker's repository of its own holds the commit, for the coordinator to fetch.
        assert reply.bundle == str(tmp_path / "ws")
        assert gitops.git(tmp_path / "ws", "show", f"{reply.head}:{uid}.txt").stdout.strip() == "done"
        # Each reply carries its own unit's logs (and only those), removed from the worker's log directory.
        assert {Path(p).name for p in msg["files"]} == {f"{uid}.log", f"{uid}.out", f"{uid}.prompt.md"}
    assert [p.name for p in logs.iterdir()] == []
    gitops.workspace_remove(repo, tmp_path / "ws")


def test_settings_of_another_version_are_refused_for_each_unit(repo: Path, tmp_path: Path) -> None:
    settings = WorkerSettings("r1", str(tmp_path / "ws"), str(tmp_path / "logs"))
    spec = UnitSpec("a", "a", "@fake write a.txt x", AgentConfig("fake"), 60, worker=0, dispatch=1,
                    branch="distpar/r1/b/a", base=gitops.rev(repo, "main"), source=Source("worktree", str(repo)))
    unit = {"op": "unit", "unit": serial.dump(spec)}
    early, late1, late2 = serve([unit, {"version": SPEC_VERSION - 1, "settings": serial.dump(settings)}, unit, unit], 3)
    assert early == {"error": "a unit came before the worker's settings"}
    for msg in (late1, late2):
        assert "the worker's settings were refused" in msg["error"] and f"is not {SPEC_VERSION}" in msg["error"]
    assert not (tmp_path / "ws").exists()  # nothing ran


def test_an_idle_worker_sends_heartbeats_when_asked() -> None:
    """With ``$DISTPAR_HEARTBEAT_SECONDS`` the worker sends ``{"heartbeat": TIME}`` lines that often, even with
    nothing to do (the SSH backend's stall watch lives on them; busy, tests/ssh/test_stall.py); its input ending
    still ends it."""
    import os
    import time

    from distpar.worker.serve import HEARTBEAT_VAR

    proc = subprocess.Popen([sys.executable, "-m", "distpar.worker", "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, HEARTBEAT_VAR: "0.2"})
    assert proc.stdin is not None and proc.stdout is not None
    timer = threading.Timer(60, proc.kill)  # bounded: a worker that never beats fails the test instead of hanging it
    timer.start()
    try:
        t0 = time.time()
        beats = [json.loads(proc.stdout.readline() or "{}") for _ in range(3)]
        assert all(isinstance(b.get("heartbeat"), float) and b["heartbeat"] >= t0 for b in beats), beats
        assert beats[0]["heartbeat"] < beats[1]["heartbeat"] < beats[2]["heartbeat"]
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
