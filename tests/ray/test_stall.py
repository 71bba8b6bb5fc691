"""The Ray backend's watch: an actor frozen mid-unit on a node Ray still thinks healthy (nothing dies, so Ray
reports nothing) is found by its missing heartbeats, reported, replaced, and its unit runs again. A real Ray
cluster, the fake agent."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from distpar.backends.ray import STALL_VAR
from distpar.testing.builders import independent_plan, write_plan
from tests.conftest import poll
from tests.ray.conftest import RayCluster
from tests.ray.test_ray import agent_starts, run_plan

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_frozen_actor_is_reported_and_its_unit_runs_again(ray_cluster: RayCluster, repo: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    monkeypatch.setenv(STALL_VAR, "12")
    plan_file = write_plan(tmp_path / "plan.md", independent_plan(2, sleep=4))
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(
        zip(("report", "runner", "journal"),
            run_plan(repo, plan_file, workers=2, retries=1, forward=("FAKE_AGENT_LOG",)), strict=True)))
    thread.start()
    frozen = 0
    try:
        hit = poll(lambda: next(iter(agent_starts(agent_log)), None), 60)
        assert hit, "no agent started"
        actor = parent_of(int(hit["pid"]))  # the Ray worker process that hosts the unit's actor
        assert "ray" in Path(f"/proc/{actor}/cmdline").read_text().lower()
        os.kill(actor, signal.SIGSTOP)
        frozen = actor
        thread.join(150)
        assert not thread.is_alive(), "the run hung on a frozen actor"
    finally:
        if frozen:  # Ray's kill cannot reach a stopped process: what this test froze, it ends
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGKILL)
        thread.join(150)
    report, runner, journal = out["report"], out["runner"], out["journal"]
    assert report.state == "ok", report.summary()
    unit = str(hit["batch"])
    events = journal.events(runner.run_id)
    stalled = [e for e in events if e.kind == "transport_stalled"]
    assert [e.unit_id for e in stalled] == [unit], [(e.kind, e.unit_id, e.data) for e in events]
    assert "stalled: the actor of worker" in stalled[0].data["error"] and "for 12s" in stalled[0].data["error"]
    assert [e.unit_id for e in events if e.kind == "unit_retry"] == [unit]
    assert next(r for r in report.results if r.unit_id == unit).attempt == 2
    assert all((repo / f"src/mod{i}.py").read_text() == f"VALUE = {i}\n" for i in (1, 2))
