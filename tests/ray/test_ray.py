"""The Ray backend on a real three-node Ray cluster, with the fake agent: spread, faults, both ways of moving
code, interrupts. No mocks of Ray."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distpar import agents
from distpar.backends import make_backend
from distpar.backends.base import Backend, RunContext
from distpar.backends.ray import RayBackend
from distpar.errors import BackendError
from distpar.journal import Journal
from distpar.model import AgentConfig, BatchStatus
from distpar.plan import load_plan
from distpar.runtime import Runner, RunOptions, RunReport, open_journal, preflight
from distpar.schedule import make_schedule
from distpar.testing import fake_batch, independent_plan, make_repo, sh_git, tree_files, write_plan
from tests.conftest import poll, processes_with_mark, run_distpar
from tests.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

FILES = {"README.md": "# demo\n", "src/__init__.py": ""}


def run_plan(repo: Path, plan_file: Path, *, backend: Backend | None = None, workers: int = 3, retries: int = 0,
             repo_url: str | None = None, forward: tuple[str, ...] = (),
             runner_hook: Callable[[Runner], None] | None = None) -> tuple[RunReport, Runner, Journal]:
    """A run through the Python API, assembled as ``distpar run`` does; the backend is Ray unless given."""
    plan = load_plan(plan_file)
    options = RunOptions(agent=agents.agent_config("fake", AgentConfig()), retries=retries,
                         forward_env=("DISTPAR_TEST_MARK", *forward), backend=backend.name if backend else "ray",
                         plan_path=str(plan_file), repo_url=repo_url)
    root, target, start = preflight(repo, options)
    journal = open_journal(root)
    backend = backend or make_backend("ray", {"address": None})
    runner = Runner(root, plan, make_schedule(plan, workers), options, backend, journal, target, start)
    if runner_hook:
        runner_hook(runner)
    return runner.run(), runner, journal


def agent_starts(log: Path) -> list[dict[str, Any]]:
    """Invocations recorded by the fake agent (FAKE_AGENT_LOG), oldest first."""
    lines = log.read_text().split("\n")[:-1] if log.exists() else []  # complete lines only: agents append
    return [json.loads(line) for line in lines]


def node_of(entry: dict[str, Any], cluster: RayCluster) -> str:
    """The node-id prefix of the run directory an agent worked in: <DISTPAR_RAY_DIR>/<run>/<node>/wt/s<k>."""
    return Path(entry["cwd"]).resolve().relative_to(cluster.node_dir.resolve()).parts[1]


def test_plan_spreads_over_nodes_and_equals_a_serial_run(ray_cluster: RayCluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-value-4242"
    monkeypatch.setenv("DISTPAR_SECRET_TOKEN", secret)
    batches = [
        *independent_plan(5, sleep=1),
        # Depends on two other streams' work: its base is shipped as an increment bundle.
        fake_batch(6, extra=['@fake append src/mod1.py "X = 6"', '@fake append src/mod2.py "Y = 6"',
                             "@fake print-env DISTPAR_SECRET_TOKEN"], depends_on=["1", "2"]),
        fake_batch(7, extra=['@fake append src/mod1.py "Z = 7"'], depends_on=["6", "3"]),
    ]
    plan_file = write_plan(tmp_path / "plan.md", batches)
    serial_repo = make_repo(tmp_path / "serial", FILES)
    serial, _, _ = run_plan(serial_repo, plan_file, backend=make_backend("local", {}), workers=1)
    assert serial.state == "ok", serial.summary()

    repo = make_repo(tmp_path / "repo", FILES)
    report, runner, journal = run_plan(repo, plan_file, workers=3, forward=("DISTPAR_SECRET_TOKEN",))

    assert report.state == "ok", report.summary()
    assert tree_files(repo) == tree_files(serial_repo)
    assert (repo / "src/mod1.py").read_text() == "VALUE = 1\nX = 6\nZ = 7\n"
    nodes = {row["node"] for row in journal.batches(runner.run_id)}
    assert len(nodes) >= 2, nodes
    assert nodes <= ray_cluster.node_ids()
    for r in report.results:  # each batch log came back to the coordinator
        assert r.log_path and Path(r.log_path).parent == runner.run_dir / "logs" and Path(r.log_path).exists()
    log6 = Path(next(r.log_path for r in report.results if r.batch_id == "6")).read_text()
    assert "DISTPAR_SECRET_TOKEN=***" in log6 and secret not in log6
    assert secret.encode() not in Path(journal.path).read_bytes()
    assert not (ray_cluster.node_dir / runner.run_id).exists(), "the nodes' run directories were not removed"


def test_node_removed_mid_run_is_retried_elsewhere(ray_cluster: RayCluster, repo: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, isolated_env: str) -> None:
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    plan_file = write_plan(tmp_path / "plan.md", independent_plan(4, sleep=4))
    workers = {n.node_id[:12]: n for n in ray_cluster.worker_nodes()}
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(
        zip(("report", "runner", "journal"),
            run_plan(repo, plan_file, workers=4, retries=1, forward=("FAKE_AGENT_LOG",)), strict=True)))
    thread.start()
    removed = None
    try:
        # An agent is running on a worker node (not the head): that node goes away.
        hit = poll(lambda: next((e for e in agent_starts(agent_log) if node_of(e, ray_cluster) in workers),
                                    None), 60)
        assert hit, f"no batch started on a worker node: {agent_starts(agent_log)}"
        removed = workers[node_of(hit, ray_cluster)]
        ray_cluster.cluster.remove_node(removed, allow_graceful=False)
        thread.join(150)
        assert not thread.is_alive(), "the run hung after a node died"
    finally:
        if removed is not None:
            ray_cluster.add_node()  # the next tests get three nodes again
        thread.join(150)

    report, runner, journal = out["report"], out["runner"], out["journal"]
    assert report.state == "ok", report.summary()
    assert {r.batch_id: r.status for r in report.results} == {str(i): BatchStatus.OK for i in range(1, 5)}
    retried = next(r for r in report.results if r.batch_id == str(hit["batch"]))
    assert retried.attempt == 2 and retried.node != removed.node_id
    events = journal.events(runner.run_id)
    retried_batches = {e.batch_id for e in events if e.kind == "segment_retry"}
    assert str(hit["batch"]) in retried_batches, [(e.kind, e.batch_id, e.data) for e in events]
    assert any(e.kind == "segment_error" and "died" in e.data["error"] for e in events)
    assert all((repo / f"src/mod{i}.py").read_text() == f"VALUE = {i}\n" for i in range(1, 5))
    # Ray kills the dead worker's agent (its direct child) shortly after the node goes away.
    assert poll(lambda: not processes_with_mark(isolated_env, wait=0), 15), "the removed node's agent lives on"


def test_repo_url_mode_against_a_bare_repository(ray_cluster: RayCluster, repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    batches = [*independent_plan(3, sleep=0.5),
               fake_batch(4, extra=['@fake append src/mod1.py "Y = 4"'], depends_on=["1", "3"])]
    report, runner, _ = run_plan(repo, write_plan(tmp_path / "plan.md", batches), workers=3, repo_url=str(remote))

    assert report.state == "ok", report.summary()
    assert (repo / "src/mod1.py").read_text() == "VALUE = 1\nY = 4\n"
    assert all((repo / f"src/mod{i}.py").exists() for i in (2, 3))
    pushed = sh_git(remote, "for-each-ref", "--format=%(refname)", f"refs/heads/distpar/{runner.run_id}/")
    assert len(pushed.splitlines()) == 3  # every stream pushed its branch


def test_bundle_mode_through_the_cli(ray_cluster: RayCluster, repo: Path, tmp_path: Path) -> None:
    batches = [*independent_plan(3), fake_batch(4, extra=['@fake append src/mod2.py "W = 4"'], depends_on=["2"])]
    plan_file = write_plan(tmp_path / "plan.md", batches)
    proc = run_distpar("run", str(plan_file), "--workers", "2", "--backend", "ray", "--ray-address",
                       ray_cluster.address, "--agent", "fake", "--forward-env", "DISTPAR_TEST_MARK", "--json", "-q",
                       cwd=repo)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "ok" and summary["batches"] == {"ok": 4}
    assert (repo / "src/mod2.py").read_text() == "VALUE = 2\nW = 4\n"
    assert sh_git(repo, "status", "--porcelain") == ""


def test_ctrl_c_stops_every_task_and_agent_and_keeps_their_work(ray_cluster: RayCluster, repo: Path,
                                                                 tmp_path: Path, isolated_env: str) -> None:
    agent_log = tmp_path / "agents.jsonl"
    batches = [fake_batch(i, writes={f"src/w{i}.py": "half done\n"}, extra=["@fake hang"]) for i in (1, 2, 3)]
    plan_file = write_plan(tmp_path / "plan.md", batches)
    proc = subprocess.Popen(
        [sys.executable, "-m", "distpar", "run", str(plan_file), "--workers", "3", "--backend", "ray",
         "--ray-address", ray_cluster.address, "--agent", "fake", "--forward-env", "DISTPAR_TEST_MARK",
         "--forward-env", "FAKE_AGENT_LOG", "--json", "-q"],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FAKE_AGENT_LOG": str(agent_log)},
    )
    try:
        assert poll(lambda: len(agent_starts(agent_log)) == 3, 90), agent_starts(agent_log)
        assert len(processes_with_mark(isolated_env, wait=0)) >= 3  # the agents run, and carry the mark
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["state"] == "interrupted" and summary["batches"] == {"interrupted": 3}, summary
    assert processes_with_mark(isolated_env) == []
    assert poll(lambda: ray_cluster.busy_slots() == 0, 15), "a distpar task is still running"
    assert not (ray_cluster.node_dir / summary["run_id"]).exists()  # everything came back: nodes cleaned
    # The unfinished work came back from the nodes and is kept on refs in the user's repository.
    assert len(summary["saved_refs"]) == 3
    for ref in summary["saved_refs"]:
        files = sh_git(repo, "ls-tree", "-r", "--name-only", ref).splitlines()
        assert any(f.startswith("src/w") for f in files), (ref, files)


class ForceCancelOnly(RayBackend):
    """Skips the cooperative cancel, as if every task ignored it: only the force-cancel fallback is left."""

    def _cancel(self, refs: list[Any], force: bool) -> None:
        super()._cancel(refs, force=True)


def test_force_cancel_fallback_resolves_every_segment(ray_cluster: RayCluster, repo: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, isolated_env: str) -> None:
    """Force-cancelled tasks: every future still resolves, no agent survives, and workspaces whose work never
    came back are kept on the nodes."""
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    plan_file = write_plan(tmp_path / "plan.md", [fake_batch(i, extra=["@fake hang"]) for i in (1, 2)])

    def interrupt_when_running(runner: Runner) -> None:
        def watch() -> None:
            if poll(lambda: len(agent_starts(agent_log)) == 2, 90):
                runner.interrupt()
        threading.Thread(target=watch, daemon=True).start()

    report, runner, _ = run_plan(repo, plan_file, backend=ForceCancelOnly(), workers=2,
                                 forward=("FAKE_AGENT_LOG",), runner_hook=interrupt_when_running)
    assert report.state == "interrupted", report.summary()
    assert all(r.status is BatchStatus.FAILED and "cancelled" in r.error for r in report.results), report.results
    kept = sorted(p.name for p in (ray_cluster.node_dir / runner.run_id).glob("*/wt/w*") if p.is_dir())
    assert kept == ["s1", "s2"]
    # Ray kills a force-cancelled worker's agent (its direct child) as the worker exits.
    assert poll(lambda: not processes_with_mark(isolated_env, wait=0), 15), "an agent outlived its task"


def test_unreachable_address_is_a_clear_backend_error(repo: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the run: nothing listens there
    plan_file = write_plan(tmp_path / "plan.md", independent_plan(1))
    proc = run_distpar("run", str(plan_file), "--backend", "ray", "--ray-address", f"127.0.0.1:{port}",
                       "--agent", "fake", cwd=repo, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused" in proc.stdout
    assert "WARNING" not in proc.stderr


def test_missing_ray_is_a_clear_backend_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BackendError, match=r"pip install 'distpar\[ray\]'"):
        RayBackend().start(RunContext("r", tmp_path, tmp_path, 1))
