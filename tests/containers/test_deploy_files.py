"""deploy/ agrees with itself, with the Ray backend and with KubeRay's schema (no Docker needed): one pinned Ray
version everywhere, the compose cluster's knobs, limits and health checks, the KubeRay manifest validated against
the RayCluster schema of v1.1.0 and v1.7.0, and what the KubeRay emulation makes of it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from distpar.backends import raycompat
from distpar.backends.ray import SLOT
from tests.conftest import REPO_ROOT
from tests.containers import kuberay, kuberay_crd
from tests.containers.test_ray_containers import HEAD_ENV, RAY_ENV

pytestmark = pytest.mark.containers

DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s" / "raycluster.yaml"
JOB = DEPLOY / "k8s" / "coordinator-job.yaml"


def defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def load(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the ray extra: pip install 'distpar[ray]'")
    return [d for d in yaml.safe_load_all(defaults(path.read_text())) if d]


def raycluster() -> dict[str, Any]:
    return next(d for d in load(K8S) if d["kind"] == "RayCluster")


def test_ray_is_pinned_once() -> None:
    """pyproject's extra, the manifest, the build and the installed Ray all say raycompat.py's version."""
    import ray

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["ray"] == [f"ray[default]=={raycompat.RAY_VERSION}"]
    assert raycluster()["spec"]["rayVersion"] == raycompat.RAY_VERSION
    assert ray.__version__ == raycompat.RAY_VERSION  # this coordinator was installed from the extra
    assert raycompat.minor(f"{sys.version_info[0]}.{sys.version_info[1]}") == raycompat.PYTHON_MINOR
    # build.sh reads both pins from raycompat.py (no copy of its own to drift)
    out = subprocess.run(["bash", "-c", 'source <(sed -n "/^pinned()/p" "$1"); REPO_ROOT=$2; '
                          'echo "$(pinned RAY_VERSION) $(pinned PYTHON_MINOR)"', "_",
                          str(DEPLOY / "images" / "build.sh"), str(REPO_ROOT)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == [raycompat.RAY_VERSION, raycompat.PYTHON_MINOR]
    text = (REPO_ROOT / "README.md").read_text() + (DEPLOY / "README.md").read_text()
    assert set(re.findall(r"Ray \*{0,2}(2\.\d+\.\d+)", text)) == {raycompat.RAY_VERSION}


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
        assert node["user"] == "1000:1000" and node["cap_drop"] == ["ALL"]
        assert "cpus" in node and "mem_limit" in node  # Ray counts the limits, not the host
        assert node["healthcheck"]["test"][:2] in (["CMD", "distpar-node-health"], ["CMD-SHELL",
                                                   node["healthcheck"]["test"][1]])
        assert "distpar-node-health" in " ".join(node["healthcheck"]["test"])
    assert int(w["--num-cpus"]) == int(worker["cpus"])  # the CPUs offered are the CPUs allowed
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert worker["environment"]["RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"] == "true"
    assert {k for k in head["environment"] if k.startswith("RAY_health_check")} <= set(HEAD_ENV)
    assert head["environment"]["GRPC_ENABLE_FORK_SUPPORT"] == RAY_ENV["GRPC_ENABLE_FORK_SUPPORT"] == "0"


def test_compose_knobs_are_documented() -> None:
    """Every ${VAR} the compose files read is in deploy/README.md's knob table, with the same default."""
    readme = (DEPLOY / "README.md").read_text()
    for path in (COMPOSE, DEPLOY / "compose" / "agent-keys.yml"):
        for var, default in re.findall(r"\$\{([A-Z_]+):?[-?]([^}]*)\}", path.read_text()):
            assert f"`{var}`" in readme, f"{path.name}: {var} is not documented in deploy/README.md"
            if path == COMPOSE:
                row = next(line for line in readme.splitlines() if line.startswith("|") and f"`{var}`" in line)
                assert f"`{default}`" in row, f"{var}: default {default} not in {row}"


def test_kuberay_cluster_matches_the_backend() -> None:
    profile = next(d for d in load(K8S) if d["kind"] == "ConfigMap")
    cluster = raycluster()
    assert "/opt/distpar/bin" in profile["data"]["distpar.sh"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is False  # nothing claims autoscaling
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
        assert {"/dev/shm", "/tmp/ray"} <= set(mounts)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["distpar-profile"]["configMap"]["name"] == profile["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        for kind in ("readinessProbe", "livenessProbe"):
            assert container[kind]["httpGet"] == {"path": "/api/healthz", "port": 52365}
        for res in ("requests", "limits"):
            assert {"cpu", "memory", "ephemeral-storage"} <= set(container["resources"][res])
    worker_env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
    assert worker_env["RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"]["value"] == "true"
    assert worker_env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    mounts = {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/tmp/distpar-ray" in mounts and worker_env["DISTPAR_RAY_DIR"]["value"] == "/tmp/distpar-ray"


@pytest.mark.parametrize("version", kuberay_crd.VERSIONS)
def test_manifest_is_valid_for_the_raycluster_crd(version: str) -> None:
    assert kuberay_crd.errors(raycluster(), version) == []


@pytest.mark.parametrize("version", kuberay_crd.VERSIONS)
def test_crd_schema_rejects_what_kubernetes_would(version: str) -> None:
    """The schema is not a rubber stamp: a misspelt field, a wrong type and (v1.1) a missing rayStartParams."""
    bad = copy.deepcopy(raycluster())
    group = bad["spec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    group["replicas"] = "two"
    del bad["spec"]["headGroupSpec"]["rayStartParams"]
    errors = kuberay_crd.errors(bad, version)
    assert any("'readinesProbe' was unexpected" in e for e in errors), errors
    assert any(e.startswith("spec.workerGroupSpecs.0.replicas:") for e in errors), errors
    assert any("'rayStartParams' is a required property" in e for e in errors) == (version == "v1.1.0"), errors


def test_kuberay_emulation_builds_the_documented_commands() -> None:
    cluster = raycluster()
    old, new = kuberay.build_pods(cluster, "v1.1.0"), kuberay.build_pods(cluster, "v1.7.0")
    assert [p.node_type for p in old] == ["head", "worker", "worker"]  # replicas: 2
    for pods, shell in ((old, ["/bin/bash", "-lc", "--"]), (new, ["/bin/bash", "-c", "--"])):
        for pod in pods:
            assert pod.container["command"] == shell
            args = pod.container["args"][0]
            assert " --block " in args and " --dashboard-agent-listen-port=52365 " in args
            if pod.node_type == "worker":
                assert f" --address={kuberay.fqdn(cluster)}:6379 " in args
                assert ' --resources="{\\"distpar_slot\\": 4}" ' in args  # one argument once bash parses it
                assert f" --memory={4 * 2**30} " in args and " --num-cpus=2 " in args
                assert [c["name"] for c in pod.init_containers] == ["wait-gcs-ready"]
                assert pod.init_containers[0]["command"] == shell
                assert "ANTHROPIC_API_KEY" not in pod.container["env"]  # optional Secret, absent
            else:
                assert " --num-cpus=0 " in args and pod.container["env"]["RAY_ADDRESS"] == "127.0.0.1:6379"
    # Without declared probes, v1.1 would inject wget-based ones, v1.7 the same httpGet as declared.
    assert "wget" in kuberay.injected_probes("v1.1.0", cluster, "worker")["exec"]["command"][-1]
    assert kuberay.injected_probes("v1.7.0", cluster, "worker")["httpGet"]["path"] == "/api/healthz"
    with_key = kuberay.build_pods(cluster, "v1.7.0", {"distpar-agent-keys": {"ANTHROPIC_API_KEY": "k"}})
    assert all(p.container["env"].get("ANTHROPIC_API_KEY") == "k" for p in with_key if p.node_type == "worker")


def test_coordinator_job_keeps_the_work() -> None:
    (job,) = load(JOB)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["RAY_ADDRESS"] == f"ray://{kuberay.head_service(raycluster())}:10001"
    script = c["command"][-1]
    assert "distpar run \"$PLAN\" --backend ray" in script and "|| status=$?" in script
    assert "'+refs/distpar/*:refs/distpar/*'" in script  # what distpar kept leaves the pod too
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
