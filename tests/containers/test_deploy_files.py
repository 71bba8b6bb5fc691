"""deploy/compose and deploy/k8s agree with the Ray backend and with what the container tests prove (no Docker
needed: the compose file's commands are the ones test_ray_containers.py runs, give or take the knobs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dependency of ray

from tests.conftest import REPO_ROOT
from tests.containers.test_ray_containers import HEAD_ENV, RAY_ENV, SLOT

pytestmark = pytest.mark.containers

COMPOSE = REPO_ROOT / "deploy" / "compose" / "docker-compose.yml"
K8S = REPO_ROOT / "deploy" / "k8s" / "raycluster.yaml"


def defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def load(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(defaults(path.read_text())))


def test_compose_cluster_matches_the_backend() -> None:
    (doc,) = load(COMPOSE)
    head, worker = doc["services"]["ray-head"], doc["services"]["ray-worker"]
    assert head["command"][:3] == ["ray", "start", "--head"] and worker["command"][:2] == ["ray", "start"]
    h, w = flags(head["command"]), flags(worker["command"])
    assert h["--num-cpus"] == "0" and "--resources" not in h  # no agents on the head
    assert json.loads(w["--resources"]) == {SLOT: 4}
    assert w["--address"] == "ray-head:6379" and h["--port"] == "6379"
    assert head["ports"][0] == f"127.0.0.1:10001:{h['--ray-client-server-port']}"
    assert all(p.startswith("127.0.0.1:") for p in head["ports"]) and "ports" not in worker  # loopback only
    for node in (head, worker):
        assert node["init"] is True and node["shm_size"] == "1g" and node["pull_policy"] == "never"
        assert node["image"] == "distpar-worker:latest"
    assert {k for k in head["environment"] if k.startswith("RAY_health_check")} <= set(HEAD_ENV)
    assert head["environment"]["GRPC_ENABLE_FORK_SUPPORT"] == RAY_ENV["GRPC_ENABLE_FORK_SUPPORT"] == "0"


def test_kuberay_cluster_matches_the_backend() -> None:
    import ray

    profile, cluster = load(K8S)
    assert profile["kind"] == "ConfigMap" and "/opt/distpar/bin" in profile["data"]["distpar.sh"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == ray.__version__  # the image is built from the same wheels
    head = cluster["spec"]["headGroupSpec"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert head["rayStartParams"]["num-cpus"] == "0" and "resources" not in head["rayStartParams"]
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {SLOT: 4}  # KubeRay's quoted form
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} == {6379, 8265, 10001}
    for spec in (head["template"]["spec"], group["template"]["spec"]):
        (container,) = spec["containers"]
        assert {"name": "GRPC_ENABLE_FORK_SUPPORT", "value": "0"} in container["env"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/profile.d/distpar.sh"]["subPath"] == "distpar.sh"
        assert "/dev/shm" in mounts
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["distpar-profile"]["configMap"]["name"] == profile["metadata"]["name"]
