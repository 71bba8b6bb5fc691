"""The Ray backend on a Ray cluster in worker-image containers, through the real CLI.

A head (no CPUs, no ``distpar_slot``: it runs no agents) and two workers (``distpar_slot`` 4 each) on a network of
the module's own; only the head's Ray client port is published, on 127.0.0.1, and the driver on the host connects
with ``--ray-address ray://127.0.0.1:<port>`` (same Ray and Python minor as the image: the same wheels). Node
code comes from the image, so the image must hold this checkout's distpar: a stale image is reported, not run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from distpar.backends import raycompat
from distpar.backends.ray import NODE_DIR_VAR, SLOT
from distpar.coordinator.runtime import open_journal
from distpar.testing.builders import fake_batch, independent_plan, make_repo, tree_files, write_plan
from tests.conftest import run_distpar
from tests.containers.conftest import (
    BUILD_HINT,
    Containers,
    container_ip,
    distpar,
    exec_in,
    finished,
    logs_of,
    published_port,
    tcp_open,
    unavailable,
    wait_until,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(300)]
log = logging.getLogger(__name__)

FAKE = ("--agent", "fake")
SLOTS_PER_WORKER = 4
CLIENT_PORT = 10001
NODE_DIR = "/tmp/distpar-ray"  # where the nodes keep their run directories
SHM = "1g"  # above every node's object store, so Ray keeps it in /dev/shm
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    NODE_DIR_VAR: NODE_DIR,
    # grpcio 1.85's fork handlers crash the child when the head's Ray client server forks the server of a new
    # client while gRPC threads are busy (~1 connection in 5: "Initialization failure from server"). Every fork
    # here is followed by exec, so the handlers are not needed.
    "GRPC_ENABLE_FORK_SUPPORT": "0",
}
# The GCS notices a killed worker container in ~5 s instead of ~30 s (Ray config names, RAY_<name>, checked in
# Ray 2.60's ray_config_def.h); the timeout leaves room for a loaded two-core machine.
HEAD_ENV = {
    **RAY_ENV,
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
}
# Not RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper=true (the backend's docstring suggests it):
# Ray then sets SIGCHLD to SIG_IGN in its workers, so every subprocess of a task seems to exit 0 and the worker
# fails (its git bundle "succeeds" without being written) unless the task resets SIGCHLD first.
WORKER_ENV = RAY_ENV
HEAD_CMD = ["ray", "start", "--head", "--port=6379", f"--ray-client-server-port={CLIENT_PORT}", "--num-cpus=0",
            "--object-store-memory=200000000", "--include-dashboard=false", "--disable-usage-stats", "--block"]
WORKER_CMD = ["ray", "start", "--address=ray-head:6379", "--num-cpus=2",
              f"--resources={json.dumps({SLOT: SLOTS_PER_WORKER})}", "--object-store-memory=100000000",
              "--disable-usage-stats", "--block"]

# What a node runs of distpar: the modules these imports load (not the CLI, journal, reports...).
NODE_IMPORTS = "import distpar.backends.ray, distpar.worker, distpar.testing.fake_agent"
# The same digest on both sides: the files named in argv[1] (relative to the package), by path and content.
DIGEST = """
import hashlib, json, pathlib, sys, distpar
root = pathlib.Path(distpar.__file__).parent
h = hashlib.sha256()
for rel in json.loads(sys.argv[1]):
    f = root / rel
    h.update(rel.encode() + b"\\0" + (f.read_bytes() if f.exists() else b"(missing)") + b"\\0")
print(h.hexdigest())
"""


def node_modules() -> list[str]:
    """The distpar modules a node loads, as paths relative to the package (found in a fresh interpreter)."""
    script = (f"{NODE_IMPORTS}\nimport json, pathlib, sys, distpar\nroot = pathlib.Path(distpar.__file__).parent\n"
              "print(json.dumps(sorted(pathlib.Path(m.__file__).relative_to(root).as_posix() for n, m in "
              "list(sys.modules.items()) if n.split('.')[0] == 'distpar' and getattr(m, '__file__', None))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL)
    return list(json.loads(out.stdout))


def digest(modules: list[str], python: tuple[str, ...] = (sys.executable,)) -> list[str]:
    return [*python, "-c", DIGEST, json.dumps(modules)]


@dataclass
class RayContainers:
    containers: Containers
    network: Any
    head: Any
    port: int
    workers: dict[str, Any] = field(default_factory=dict)  # alias -> container

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.port}"

    def add_worker(self, alias: str) -> Any:
        c = self.containers.start(alias, command=WORKER_CMD, env=WORKER_ENV, shm_size=SHM, init=True)
        self.workers[alias] = c
        return c

    def remove_worker(self, alias: str) -> None:
        self.containers.remove(self.workers.pop(alias))

    def nodes(self) -> dict[str, str]:
        """Alive node id -> alias of the worker container it runs in ("ray-head" for the head)."""
        import ray

        by_ip = {container_ip(c, self.network): alias for alias, c in self.workers.items()}
        by_ip[container_ip(self.head, self.network)] = "ray-head"
        return {n["NodeID"]: by_ip.get(n["NodeManagerAddress"], n["NodeManagerAddress"])
                for n in ray.nodes() if n["Alive"]}

    def wait_for_workers(self, timeout: float = 120) -> dict[str, str]:
        want = set(self.workers)
        return wait_until(lambda: (n := self.nodes()) and want <= set(n.values()) and n, timeout,
                          f"Ray worker nodes {sorted(want)} to join",
                          on_timeout=lambda: "\n".join(f"--- {a}\n{logs_of(c)}" for a, c in self.workers.items()))

    def diagnostics(self) -> str:
        """The tail of the head's Ray client server logs (where a refused client connection is explained)."""
        logs = "/tmp/ray/session_latest/logs"
        return exec_in(self.head, f"tail -n 15 {logs}/ray_client_server*.out {logs}/ray_client_server*.err",
                       check=False)

    def busy_slots(self) -> float:
        import ray

        return float(ray.cluster_resources().get(SLOT, 0) - ray.available_resources().get(SLOT, 0))


@pytest.fixture(scope="module")
def ray_cluster(containers: Containers, network: Any) -> Iterator[RayContainers]:
    try:
        import ray
        from ray._private.utils import get_ray_client_dependency_error
    except ImportError as exc:
        unavailable(f"the Ray container tests need ray on the host ({exc}): pip install -e '.[ray]'")
    if get_ray_client_dependency_error() is not None:
        unavailable("the Ray client needs grpcio on the host (part of ray[default]): pip install -e '.[ray]'")
    t0 = time.monotonic()
    head = containers.start("ray-head", command=HEAD_CMD, env=HEAD_ENV, publish=(CLIENT_PORT,), shm_size=SHM,
                            init=True)
    image_has_this_distpar(head, containers.image)
    cluster = RayContainers(containers, network, head, published_port(head, CLIENT_PORT))
    for i in (1, 2):
        cluster.add_worker(f"ray-worker{i}")
    # The engine's proxy accepts on the published port before the client server inside listens.
    wait_until(lambda: tcp_open(cluster.port) and "Ray runtime started" in logs_of(head, 200), 120,
               "the Ray head", on_timeout=lambda: logs_of(head))
    log.info("ray head up after %.1fs", time.monotonic() - t0)
    ray_client_ready(cluster.address, on_timeout=cluster.diagnostics)
    log.info("ray client connected after %.1fs", time.monotonic() - t0)
    try:
        cluster.wait_for_workers()
        log.info("ray workers joined after %.1fs", time.monotonic() - t0)
        yield cluster
    finally:
        raycompat.shutdown(ray)


def image_has_this_distpar(container: Any, image: str) -> None:
    """Skip (fail in CI) unless the node code in ``container`` is this checkout's: Ray nodes run the image's."""
    modules = node_modules()
    here = subprocess.run(digest(modules), capture_output=True, text=True, check=True).stdout.strip()
    there = exec_in(container, shlex.join(digest(modules, ("python3",)))).strip()
    if there != here:
        unavailable(f"the worker image {image} holds another version of distpar than this checkout "
                    f"(Ray nodes run the image's); {BUILD_HINT}")


def ray_client_ready(address: str, on_timeout: Any = lambda: "") -> None:
    """Connect this process to ``address`` as a Ray client, retrying while the client server starts."""
    wait_until(lambda: _connect(address), 90, f"a Ray client connection to {address}", on_timeout=on_timeout)


def _connect(address: str) -> bool:
    import ray

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return True
    except ConnectionError as exc:
        log.info("ray client: %s", exc)
        ray.shutdown()
        return False


@pytest.fixture(autouse=True)
def nothing_left_on_the_nodes(ray_cluster: RayContainers) -> Iterator[None]:
    """After each test: no agent runs in a worker container, no run directory is left, every slot is free.
    What a failed test left is removed before the assertion, so one failure does not fail the next tests."""
    yield
    problems = []
    for alias, c in list(ray_cluster.workers.items()):
        def agents(c: Any = c) -> list[str]:
            return [p for p in exec_in(c, "ps -eo pid,args").splitlines() if "distpar.testing.fake_agent" in p]

        with contextlib.suppress(AssertionError):
            wait_until(lambda agents=agents: not agents(), 15, f"agents in {alias} to stop")
        if left := agents():
            problems.append(f"agents still running in {alias}: {left}")
            exec_in(c, "pkill -KILL -f distpar.testing.fake_agent", check=False)
        if left := exec_in(c, f"ls -A {NODE_DIR} 2>/dev/null || true").split():
            problems.append(f"run directories left in {alias}: {left}")
            exec_in(c, f"rm -rf {NODE_DIR}")
    with contextlib.suppress(AssertionError):
        wait_until(lambda: ray_cluster.busy_slots() == 0, 20, "every distpar_slot to be free")
    if busy := ray_cluster.busy_slots():
        problems.append(f"{busy:g} distpar_slot(s) still taken: a distpar task is still running")
    assert not problems, "\n".join(problems)


def run_id_of(stdout: str) -> str:
    return stdout.split()[1].rstrip(":")


def test_plan_across_worker_containers_equals_serial(ray_cluster: RayContainers, tmp_path: Path) -> None:
    batches = [
        fake_batch("a", writes={"a.txt": "a\n"}, sleep=2),
        fake_batch("b", writes={"b.txt": "b\n"}, sleep=2),
        fake_batch("c", writes={"c.txt": "c\n"}, sleep=2),
        fake_batch("d", writes={"d.txt": "d\n"}, sleep=2),
        # Bases that hold other workers' work: shipped to the nodes as increment bundles.
        fake_batch("e", extra=["@fake append a.txt 'from e'", "@fake append b.txt 'from e'"], depends_on=["a", "b"]),
        fake_batch("f", extra=["@fake append a.txt 'from f'", "@fake append c.txt 'from f'"], depends_on=["e", "c"]),
    ]
    plan = write_plan(tmp_path / "plan.md", batches)
    serial_repo, repo = make_repo(tmp_path / "serial" / "repo"), make_repo(tmp_path / "ray" / "repo")
    with distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo) as serial:
        out = run_distpar("run", str(plan), "--backend", "ray", "--ray-address", ray_cluster.address,
                          "--workers", "4", *FAKE, cwd=repo, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr + ray_cluster.diagnostics()
        code, text = finished(serial)
        assert code == 0, text
    assert tree_files(repo) == tree_files(serial_repo)
    assert (repo / "a.txt").read_text() == "a\nfrom e\nfrom f\n"
    run_id = run_id_of(out.stdout)
    rows = open_journal(repo).units(run_id)
    assert [r["state"] for r in rows] == ["ok"] * len(batches)
    nodes = ray_cluster.nodes()
    where = {nodes.get(r["node"], r["node"]) for r in rows}  # node ids -> worker containers
    assert where == {"ray-worker1", "ray-worker2"}, where
    logs = Path(os.environ["DISTPAR_HOME"]) / "runs" / run_id / "logs"
    assert sorted(p.name for p in logs.glob("*.log")) == [f"{b['id']}.log" for b in batches]


def test_worker_container_killed_mid_run(ray_cluster: RayContainers, tmp_path: Path) -> None:
    doomed = ray_cluster.add_worker("ray-doomed")
    try:
        doomed_id = next(n for n, alias in ray_cluster.wait_for_workers().items() if alias == "ray-doomed")
        plan = write_plan(tmp_path / "plan.md", independent_plan(5, sleep=5))
        serial_repo, repo = make_repo(tmp_path / "serial" / "repo"), make_repo(tmp_path / "ray" / "repo")
        with distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo) as serial, \
                distpar("run", str(plan), "--backend", "ray", "--ray-address", ray_cluster.address, "--workers", "5",
                        "--retries", "2", *FAKE, cwd=repo) as proc:
            wait_until(lambda: "distpar.testing.fake_agent" in exec_in(doomed, "ps -eo args"), 120,
                       "an agent at work in the doomed container (tasks are spread over the nodes)")
            doomed.get_wrapped_container().kill()  # SIGKILL: the node, its raylet and the agent vanish at once
            code, text = finished(proc)
            assert code == 0, text + ray_cluster.diagnostics()
            assert finished(serial)[0] == 0
        assert tree_files(repo) == tree_files(serial_repo)  # all the work, nothing lost
        run_id = run_id_of(text)
        journal = open_journal(repo)
        rows = journal.units(run_id)
        assert [r["state"] for r in rows] == ["ok"] * 5
        assert doomed_id not in {r["node"] for r in rows}  # the lost units ran again elsewhere
        retries = [e for e in journal.events(run_id) if e.kind == "unit_retry"]
        assert retries, text
        assert all("node" in e.data["error"] for e in retries), [e.data for e in retries]
    finally:
        ray_cluster.remove_worker("ray-doomed")


def test_pinned_ray_mismatch_is_refused_naming_both(ray_cluster: RayContainers,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """raycompat over the Ray client: the versions are the image's, read from the head; a coordinator that pins
    another Ray (patched here, never the cluster) is refused with both named."""
    import ray

    from distpar.backends import raycompat
    from distpar.core.errors import BackendError

    assert raycompat.cluster_versions(ray)[0] == raycompat.RAY_VERSION
    raycompat.check_cluster(ray)
    monkeypatch.setattr(raycompat, "RAY_VERSION", "2.59.0")
    with pytest.raises(BackendError, match=r"the cluster runs Ray 2\.60\.0 on Python 3\.11\.\d+; distpar needs "
                                           r"Ray 2\.59\.0"):
        raycompat.check_cluster(ray)


def test_cli_refuses_a_mismatched_cluster_before_starting_anything(ray_cluster: RayContainers,
                                                                  tmp_path: Path) -> None:
    import distpar.backends.ray.backend as backend
    from distpar.backends import raycompat

    if "raycompat.check_cluster" not in Path(backend.__file__).read_text():
        pytest.skip("the Ray backend does not call raycompat.check_cluster after ray.init yet")
    repo = make_repo(tmp_path / "repo")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    plan = write_plan(tmp_path / "plan.md", independent_plan(2))
    agent_log = tmp_path / "agents.jsonl"
    patched = ("import sys, distpar.backends.raycompat as r; r.RAY_VERSION = '2.59.0'; "
               "from distpar.cli.main import main; sys.argv[0] = 'distpar'; main()")
    proc = subprocess.run([sys.executable, "-c", patched, "run", str(plan), "--backend", "ray", "--ray-address",
                           ray_cluster.address, *FAKE], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FAKE_AGENT_LOG": str(agent_log)}, stdin=subprocess.DEVNULL)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 4, text
    assert "Ray version mismatch" in text and "needs Ray 2.59.0" in text, text
    assert f"the cluster runs Ray {raycompat.RAY_VERSION}" in text, text
    assert not agent_log.exists()  # no agent ran
    branches = subprocess.run(["git", "branch", "--format=%(refname:short)"], cwd=repo, capture_output=True,
                              text=True).stdout.split()
    assert branches == ["main"]
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout == head
