"""The Ray backend on a real three-node Ray cluster, with the fake agent: spread, persistent actors and their
workspaces, faults, both ways of moving code, interrupts. No mocks of Ray."""

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
from distpar.backends.ray import SLOT, RayBackend
from distpar.coordinator.executor import Runner
from distpar.coordinator.journal import Journal
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.coordinator.runtime import RunReport, open_journal
from distpar.core.errors import BackendError
from distpar.core.model import AgentConfig, UnitStatus
from distpar.testing.builders import fake_batch, independent_plan, make_repo, sh_git, tree_files, write_plan
from tests.conftest import poll, processes_with_mark, run_distpar
from tests.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

FILES = {"README.md": "# demo\n", "src/__init__.py": ""}


def run_plan(repo: Path, plan_file: Path, *, backend: Backend | None = None, workers: int = 3, retries: int = 0,
             repo_url: str | None = None, forward: tuple[str, ...] = (),
             runner_hook: Callable[[Runner], None] | None = None,
             observer: Callable[[str, dict[str, Any]], None] | None = None) -> tuple[RunReport, Runner, Journal]:
    """A run through the Python API, assembled as ``distpar run`` does; the backend is Ray unless given."""
    options = RunOptions(agent=agents.agent_config("fake", AgentConfig()), retries=retries,
                         forward_env=("DISTPAR_TEST_MARK", *forward), backend=backend.name if backend else "ray",
                         backend_options={"address": None}, repo_url=repo_url)
    prepared = prepare_run(plan_file, options, repo=repo, workers=workers, observer=observer, backend=backend)
    runner, journal = prepared.runner, prepared.journal
    if runner_hook:
        runner_hook(runner)
    return runner.run(), runner, journal


def agent_starts(log: Path) -> list[dict[str, Any]]:
    """Invocations recorded by the fake agent (FAKE_AGENT_LOG), oldest first."""
    lines = log.read_text().split("\n")[:-1] if log.exists() else []  # complete lines only: agents append
    return [json.loads(line) for line in lines]


def node_of(entry: dict[str, Any], cluster: RayCluster) -> str:
    """The node-id prefix of the run directory an agent worked in: <DISTPAR_RAY_DIR>/<run>/<node>/wt/w<k>."""
    return Path(entry["cwd"]).resolve().relative_to(cluster.node_dir.resolve()).parts[1]


def test_plan_spreads_over_nodes_and_equals_a_serial_run(ray_cluster: RayCluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-value-4242"
    monkeypatch.setenv("DISTPAR_SECRET_TOKEN", secret)
    batches = [
        *independent_plan(5, sleep=1),
        # Depends on two other workers' work: its base is shipped as an increment bundle.
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
    nodes = {row["node"] for row in journal.units(runner.run_id)}
    assert len(nodes) >= 2, nodes
    assert nodes <= ray_cluster.node_ids()
    for r in report.results:  # each batch log came back to the coordinator
        assert r.log_path and Path(r.log_path).parent == runner.run_dir / "logs" and Path(r.log_path).exists()
    log6 = Path(next(r.log_path for r in report.results if r.unit_id == "6")).read_text()
    assert "DISTPAR_SECRET_TOKEN=***" in log6 and secret not in log6
    assert secret.encode() not in Path(journal.path).read_bytes()
    assert not (ray_cluster.node_dir / runner.run_id).exists(), "the nodes' run directories were not removed"


def test_one_actor_per_node_hosts_that_nodes_workers(ray_cluster: RayCluster, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Six workers on three nodes: two per node, both in one actor process, each in a workspace of its own; the
    two agents of a node run at the same time."""
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    repo = make_repo(tmp_path / "repo", FILES)
    report, runner, journal = run_plan(repo, write_plan(tmp_path / "plan.md", independent_plan(6, sleep=2)),
                                       workers=6, forward=("FAKE_AGENT_LOG",))
    assert report.state == "ok", report.summary()
    starts = agent_starts(agent_log)
    assert len(starts) == 6
    by_node: dict[str, list[dict[str, Any]]] = {}
    for e in starts:
        by_node.setdefault(node_of(e, ray_cluster), []).append(e)
    assert len(by_node) == 3 and all(len(es) == 2 for es in by_node.values()), by_node
    for es in by_node.values():
        assert len({e["ppid"] for e in es}) == 1, es  # one process per node
        assert len({e["cwd"] for e in es}) == 2, es  # a workspace per worker
    rows = journal.units(runner.run_id)
    spans = {r["unit_id"]: (r["started"], r["ended"]) for r in rows}
    for es in by_node.values():  # the node's two units overlapped: threads of one actor, not one after the other
        (a0, a1), (b0, b1) = (spans[e["batch"]] for e in es)
        assert max(a0, b0) < min(a1, b1), spans


def test_an_actor_keeps_its_workspace_and_gets_only_what_it_lacks(ray_cluster: RayCluster, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker, four units: one actor runs them all in one workspace (an ignored build cache left by the first
    unit is still there for the next); only its first unit gets the start bundle, later ones get nothing or just
    the merge commit of their base; each agent's start and output reach the coordinator while the unit runs."""
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    repo = make_repo(tmp_path / "repo", {**FILES, ".gitignore": "cache/\n"})
    batches = [
        fake_batch(1, writes={"src/mod1.py": "VALUE = 1\n", "cache/warm": "built once\n"}),
        fake_batch(2, extra=['@fake append src/mod1.py "X = 2"', "@fake say halfway there"], depends_on=["1"],
                   sleep=3),
        fake_batch(3, writes={"src/mod3.py": "VALUE = 3\n"}, depends_on=["2"]),
        fake_batch(4, writes={"src/mod4.py": "VALUE = 4\n"}),  # its base is the start: nothing to ship
        fake_batch(5, extra=['@fake append src/mod3.py "Y = 5"'], depends_on=["3", "4"]),  # a merge commit
    ]
    backend = RayBackend()
    seen: list[tuple[str, dict[str, Any]]] = []
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(zip(("report", "runner", "journal"), run_plan(
        repo, write_plan(tmp_path / "plan.md", batches), backend=backend, workers=1, forward=("FAKE_AGENT_LOG",),
        observer=lambda kind, data: seen.append((kind, data))), strict=True)))
    thread.start()
    try:
        second = poll(lambda: next((e for e in agent_starts(agent_log) if e["batch"] == "2"), None), 90)
        assert second, agent_starts(agent_log)
        assert (Path(second["cwd"]) / "cache/warm").read_text() == "built once\n"  # the same clone, kept
    finally:
        thread.join(150)
    assert not thread.is_alive()
    report, runner, journal = out["report"], out["runner"], out["journal"]

    assert report.state == "ok", report.summary()
    assert (repo / "src/mod1.py").read_text() == "VALUE = 1\nX = 2\n"
    assert (repo / "src/mod3.py").read_text() == "VALUE = 3\nY = 5\n"
    assert not (repo / "cache").exists()  # ignored files never travel
    assert len({e["cwd"] for e in agent_starts(agent_log)}) == 1
    shipped = {s["unit"]: s for s in backend.shipped}
    assert [s["full"] for s in backend.shipped] == [True, False, False, False, False], backend.shipped
    assert shipped["2"]["bytes"] == shipped["3"]["bytes"] == shipped["4"]["bytes"] == 0, backend.shipped
    assert shipped["5"]["bytes"] > 0, backend.shipped
    rows = {row["unit_id"]: row for row in journal.units(runner.run_id)}
    assert len({row["node"] for row in rows.values()}) == 1 and rows["1"]["node"] in ray_cluster.node_ids()
    kinds = [(kind, data.get("unit")) for kind, data in seen if kind in ("unit_started", "unit_ended")]
    said = [(k, d) for k, d in seen if k == "agent_output" and d["unit"] == "2"]
    assert said and said[0][1]["line"] == "halfway there" and said[0][1]["node"] == rows["2"]["node"], said
    assert seen.index(said[0]) < seen.index(next(e for e in seen if e[0] == "unit_ended" and e[1]["unit"] == "2"))
    for b in rows:  # each agent's start was reported while its unit ran, from the node it ran on
        assert kinds.index(("unit_started", b)) < kinds.index(("unit_ended", b)), kinds
        assert next(d for k, d in seen if k == "unit_started" and d["unit"] == b)["node"] == rows[b]["node"]


def test_node_removed_mid_run_is_retried_elsewhere(ray_cluster: RayCluster, repo: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, isolated_env: str) -> None:
    """A node dies under a running unit: the unit runs again on a live node, and the worker whose actor died
    goes on with a new actor on a live node."""
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    plan_file = write_plan(tmp_path / "plan.md", independent_plan(6, sleep=3))
    workers = {n.node_id[:12]: n for n in ray_cluster.worker_nodes()}
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(
        zip(("report", "runner", "journal"),
            run_plan(repo, plan_file, workers=3, retries=1, forward=("FAKE_AGENT_LOG",)), strict=True)))
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
    assert {r.unit_id: r.status for r in report.results} == {str(i): UnitStatus.OK for i in range(1, 7)}
    retried = next(r for r in report.results if r.unit_id == str(hit["batch"]))
    assert retried.attempt == 2 and retried.node != removed.node_id
    events = journal.events(runner.run_id)
    retried_batches = {e.unit_id for e in events if e.kind == "unit_retry"}
    assert str(hit["batch"]) in retried_batches, [(e.kind, e.unit_id, e.data) for e in events]
    lost = next(e for e in events if e.kind == "unit_error" and e.unit_id == str(hit["batch"]))
    assert "died" in lost.data["error"], lost.data
    rows = journal.units(runner.run_id)
    assert removed.node_id not in {row["node"] for row in rows}
    later = [row for row in rows if row["worker"] == lost.worker and row["started"] > lost.ts]
    assert later and all(row["node"] in ray_cluster.node_ids() for row in later), rows  # a new actor, alive
    assert all((repo / f"src/mod{i}.py").read_text() == f"VALUE = {i}\n" for i in range(1, 7))
    # Ray kills the dead worker's agent (its direct child) shortly after the node goes away.
    assert poll(lambda: not processes_with_mark(isolated_env, wait=0), 15), "the removed node's agent lives on"


def test_a_unit_sent_to_an_actor_that_died_idle_goes_to_a_new_actor(ray_cluster: RayCluster, repo: Path,
                                                                     tmp_path: Path) -> None:
    """The worker's actor dies between two units: the second unit never ran, so it goes to a new actor without
    spending a retry, and that actor gets the whole base again."""
    import ray

    batches = [*independent_plan(1), fake_batch(2, extra=['@fake append src/mod1.py "X = 2"'], depends_on=["1"])]
    backend = RayBackend()
    killed: list[Any] = []

    def kill_between_units(kind: str, data: dict[str, Any]) -> None:
        if kind == "unit_ended" and data["unit"] == "1":
            handle = backend._slots[0].host.handle
            ray.kill(handle)
            killed.append(handle)

            def dead() -> bool:
                try:
                    ray.get(handle.ready.remote(), timeout=5)
                except ray.exceptions.RayActorError:
                    return True
                except ray.exceptions.GetTimeoutError:
                    pass
                return False
            assert poll(dead, 30, step=0.5)

    report, runner, journal = run_plan(repo, write_plan(tmp_path / "plan.md", batches), backend=backend, workers=1,
                                       observer=kill_between_units)
    assert killed and report.state == "ok", report.summary()
    assert [r.attempt for r in report.results] == [1, 1]
    assert (repo / "src/mod1.py").read_text() == "VALUE = 1\nX = 2\n"
    assert not any(e.kind == "unit_retry" for e in journal.events(runner.run_id))
    assert [s["full"] for s in backend.shipped] == [True, False, True], backend.shipped  # sent, then sent again


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
    assert len(pushed.splitlines()) == 4  # every unit pushed its branch


def test_bundle_mode_through_the_cli(ray_cluster: RayCluster, repo: Path, tmp_path: Path) -> None:
    batches = [*independent_plan(3), fake_batch(4, extra=['@fake append src/mod2.py "W = 4"'], depends_on=["2"])]
    plan_file = write_plan(tmp_path / "plan.md", batches)
    proc = run_distpar("run", str(plan_file), "--workers", "2", "--backend", "ray", "--ray-address",
                       ray_cluster.address, "--agent", "fake", "--forward-env", "DISTPAR_TEST_MARK", "--json", "-q",
                       cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "ok" and summary["units"] == {"ok": 4}
    assert (repo / "src/mod2.py").read_text() == "VALUE = 2\nW = 4\n"
    assert sh_git(repo, "status", "--porcelain") == ""
    journal = open_journal(repo)
    rows = journal.units(summary["run_id"])
    journal.close()
    assert {row["node"] for row in rows} <= ray_cluster.node_ids() and all(row["started"] for row in rows), rows


def test_ctrl_c_stops_every_actor_and_agent_and_keeps_their_work(ray_cluster: RayCluster, repo: Path,
                                                                  tmp_path: Path, isolated_env: str) -> None:
    """Each actor finished a unit, then runs a second one (in the same workspace) when Ctrl+C comes: every
    agent stops, the finished work stays finished, the unfinished work comes back on refs."""
    agent_log = tmp_path / "agents.jsonl"
    batches = [*independent_plan(3),
               *(fake_batch(i, writes={f"src/w{i}.py": "half done\n"}, extra=["@fake hang"], depends_on=[str(i - 3)])
                 for i in (4, 5, 6))]
    plan_file = write_plan(tmp_path / "plan.md", batches)
    proc = subprocess.Popen(
        [sys.executable, "-m", "distpar", "run", str(plan_file), "--workers", "3", "--backend", "ray",
         "--ray-address", ray_cluster.address, "--agent", "fake", "--forward-env", "DISTPAR_TEST_MARK",
         "--forward-env", "FAKE_AGENT_LOG", "--json", "-q"],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FAKE_AGENT_LOG": str(agent_log)},
    )
    try:
        assert poll(lambda: len(agent_starts(agent_log)) == 6, 90), agent_starts(agent_log)
        assert len(processes_with_mark(isolated_env, wait=0)) >= 3  # the agents run, and carry the mark
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["state"] == "interrupted" and summary["units"] == {"ok": 3, "interrupted": 3}, summary
    cwd = {e["batch"]: e["cwd"] for e in agent_starts(agent_log)}
    assert all(cwd[str(i)] == cwd[str(i - 3)] for i in (4, 5, 6)), cwd  # on the actor that ran its dependency
    assert processes_with_mark(isolated_env) == []
    assert poll(lambda: ray_cluster.busy_slots() == 0, 15), "a distpar task is still running"
    assert not (ray_cluster.node_dir / summary["run_id"]).exists()  # everything came back: nodes cleaned
    # The unfinished work came back from the nodes and is kept on refs in the user's repository.
    assert len(summary["saved_refs"]) == 3
    for ref in summary["saved_refs"]:
        files = sh_git(repo, "ls-tree", "-r", "--name-only", ref).splitlines()
        assert any(f.startswith("src/w") for f in files), (ref, files)


class ForceCancelOnly(RayBackend):
    """Skips the cooperative interrupt, as if every unit ignored it: only killing the actors is left."""

    def _interrupt(self, slot: Any) -> None:
        pass


def test_force_cancel_fallback_resolves_every_segment(ray_cluster: RayCluster, repo: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, isolated_env: str) -> None:
    """Killed actors: every future still resolves, no agent survives, and workspaces whose work never came back
    are kept on the nodes."""
    agent_log = tmp_path / "agents.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(agent_log))
    plan_file = write_plan(tmp_path / "plan.md", [fake_batch(i, extra=["@fake hang"]) for i in (1, 2)])

    def interrupt_when_running(runner: Runner) -> None:
        def watch() -> None:
            if poll(lambda: len(agent_starts(agent_log)) == 2, 90):
                runner.interrupt()
        threading.Thread(target=watch, daemon=True).start()

    report, runner, _ = run_plan(repo, plan_file, backend=ForceCancelOnly(cancel_grace=3), workers=2,
                                 forward=("FAKE_AGENT_LOG",), runner_hook=interrupt_when_running)
    assert report.state == "interrupted", report.summary()
    assert all(r.status is UnitStatus.FAILED and "cancelled" in r.error for r in report.results), report.results
    kept = sorted(p.name for p in (ray_cluster.node_dir / runner.run_id).glob("*/wt/w*") if p.is_dir())
    assert kept == ["w1", "w2"]
    # Ray kills a killed actor's agent (its direct child) as the worker exits.
    assert poll(lambda: not processes_with_mark(isolated_env, wait=0), 15), "an agent outlived its task"


def test_more_workers_than_slots_is_a_clear_backend_error(ray_cluster: RayCluster, tmp_path: Path) -> None:
    import ray

    slots = int(ray.cluster_resources()[SLOT])
    backend = RayBackend()
    try:
        with pytest.raises(BackendError, match=f"has {slots} {SLOT} resources, fewer than the {slots + 1} workers"):
            backend.start(RunContext("r", tmp_path, tmp_path, slots + 1))
    finally:
        backend.close()


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
