"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) for the Ray backend tests.

One cluster per module: a head and two worker nodes, each with one CPU, three ``distpar_slot`` and an 80 MB
object store. Its processes start with the environment of this fixture (no test's ``DISTPAR_TEST_MARK``, so the
session's leak check never mistakes a Ray worker for a leaked agent; agents carry the mark because the tests
forward it with ``forward_env``), ``DISTPAR_RAY_DIR`` pointing at a temp dir (every node's run directory lives
under it), and an empty git config. After every test, no process may have its working directory under that dir
(an agent left behind) and every ``distpar_slot`` must be free again (no distpar task still running).
The pytest process connects as a driver; the backend reuses that connection, so it never shuts it down.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings

os.environ["RAY_AUTH_MODE"] = "disabled"  # before ray is imported
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'distpar[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

from distpar.backends.ray import NODE_DIR_VAR, SLOT  # noqa: E402
from tests.conftest import poll  # noqa: E402

SLOTS_PER_NODE = 3
NODE_ARGS: dict[str, Any] = {
    "num_cpus": 1,
    "resources": {SLOT: SLOTS_PER_NODE},
    "object_store_memory": 80 * 1024 * 1024,
}
# Notice a removed node within about a second instead of Ray's default half minute.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


log = logging.getLogger(__name__)

@dataclass
class RayCluster:
    cluster: Cluster
    base: Path

    @property
    def node_dir(self) -> Path:  # DISTPAR_RAY_DIR of every node
        return self.base / "nodes"

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    @property
    def head_id(self) -> str:
        return str(self.cluster.head_node.node_id)

    def worker_nodes(self) -> list[Any]:
        return list(self.cluster.worker_nodes)

    def node_ids(self) -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def add_node(self) -> Any:
        with node_env(self.base):
            node = self.cluster.add_node(**NODE_ARGS)
            self.cluster.wait_for_nodes()
        return node

    def busy_slots(self) -> float:
        return float(ray.cluster_resources().get(SLOT, 0) - ray.available_resources().get(SLOT, 0))


@contextmanager
def node_env(base: Path) -> Iterator[None]:
    """The environment Ray node processes (and so the tasks' worker processes) start with."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DISTPAR_TEST_MARK", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv(NODE_DIR_VAR, str(base / "nodes"))
        mp.setenv("GIT_CONFIG_GLOBAL", str(base / "gitconfig"))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        yield


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    base = tmp_path_factory.mktemp("ray")
    (base / "gitconfig").write_text("")
    with node_env(base):
        cluster = Cluster(initialize_head=True, head_node_args={
            **NODE_ARGS, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS})
        try:
            for _ in range(2):
                cluster.add_node(**NODE_ARGS)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        except BaseException:
            cluster.shutdown()
            raise
    try:
        yield RayCluster(cluster, base)
    finally:
        ray.shutdown()
        cluster.shutdown()
        # A Ray driver leaves unclosed sockets behind now and then (unbound, AF_INET: never distpar's, whose
        # sockets are all closed by ``with``); the garbage collector found them at random in a later module's
        # set-up, where pytest turns the ResourceWarning into an error. They are collected here, as this cluster
        # ends, and said.
        with warnings.catch_warnings(record=True) as left:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        for w in left:
            log.warning("after the Ray cluster: %s", w.message)


@pytest.fixture(autouse=True)
def nothing_left_on_the_nodes(ray_cluster: RayCluster) -> Iterator[None]:
    yield
    poll(lambda: not processes_under(ray_cluster.node_dir), 10)
    stray = processes_under(ray_cluster.node_dir)
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not stray, f"processes left running in the nodes' run directories: {stray}"
    poll(lambda: ray_cluster.busy_slots() == 0, 15)
    assert ray_cluster.busy_slots() == 0, "a distpar task is still running on the cluster"


def processes_under(directory: Path) -> list[int]:
    """Processes whose working directory is inside ``directory`` (agents run in workspaces there)."""
    found = []
    prefix = str(directory.resolve()) + os.sep
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if (cwd + os.sep).startswith(prefix) and ") Z " not in stat:
            found.append(int(entry.name))
    return found
