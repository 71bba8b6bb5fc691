"""What the KubeRay operator makes of deploy/k8s/raycluster.yaml: the head and worker pods, as v1.1.0 and v1.7.0
build them (ray-operator/controllers/ray/common/pod.go of each release: BuildPod, DefaultHeadPodTemplate,
DefaultWorkerPodTemplate, setMissingRayStartParams, generateRayStartCommand, setContainerEnvVars,
initLivenessAndReadinessProbe), for the container tests to run without Kubernetes.

Emulated: the Ray container's command (``/bin/bash -lc --`` up to v1.3, ``/bin/bash -c --`` from v1.4 unless the
operator sets ENABLE_LOGIN_SHELL) and its generated ``ulimit ...; ray start ...`` argument, the rayStartParams
KubeRay adds (address, block, metrics and dashboard-agent ports, num-cpus and memory from the limits), the
environment it injects, the ``wait-gcs-ready`` init container of workers, the probes it injects when the
template declares none, the head service's DNS name. KubeRay v1.1 walks a Go map for the flags (random order);
the emulation sorts them, as v1.7 does. Not emulated: the operator's reconcile loop, the autoscaler (off in the
manifest), services other than the head's name, ephemeral-storage limits.
"""

from __future__ import annotations

import copy
import textwrap
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "default"
HEAD_PORT = "6379"
DASHBOARD_AGENT_PORT = 52365
METRICS_PORT = 8080
# KubeRay's probe defaults (utils/constant.go): initial delay, period, timeout, failure threshold.
INJECTED_PROBE_TIMING = {"v1.1.0": (10, 5, 1, 10), "v1.7.0": (10, 5, 2, 10)}
WGET = {  # BaseWgetHealthCommand of each release
    "v1.1.0": "wget -T 2 -q -O- http://localhost:{port}/{path} | grep success",
    "v1.7.0": "wget --tries 1 -T 2 -q -O- http://localhost:{port}/{path} | grep success",
}


@dataclass
class Pod:
    """One pod KubeRay would create: its Ray container (index 0) and, for workers, the wait-gcs-ready init
    container; ``env`` values resolved as the kubelet would (field refs, Secrets)."""

    name: str
    node_type: str  # "head" | "worker"
    group: str
    container: dict[str, Any]
    volumes: list[dict[str, Any]]
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    pod_security: dict[str, Any] = field(default_factory=dict)
    share_process_namespace: bool = False


def head_service(cluster: dict[str, Any]) -> str:
    return f"{cluster['metadata']['name']}-head-svc"


def fqdn(cluster: dict[str, Any]) -> str:
    return f"{head_service(cluster)}.{NAMESPACE}.svc.cluster.local"


def shell(version: str) -> list[str]:
    """The Ray container's command: KubeRay v1.4 dropped the login shell (utils.GetContainerCommand)."""
    return ["/bin/bash", "-lc", "--"] if version == "v1.1.0" else ["/bin/bash", "-c", "--"]


def quantity_bytes(q: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    s = str(q)
    for suffix, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * mult)
    return int(s)


def cpu_count(q: str | int) -> int:
    s = str(q)
    return max(1, -(-int(s[:-1]) // 1000)) if s.endswith("m") else int(float(s))  # Quantity.Value() rounds up


def start_params(cluster: dict[str, Any], node_type: str, params: dict[str, str],
                 resources: dict[str, Any]) -> dict[str, str]:
    """setMissingRayStartParams + the num-cpus/memory part of generateRayStartCommand."""
    p = dict(params)
    if node_type == "worker":
        p.setdefault("address", f"{fqdn(cluster)}:{HEAD_PORT}")
    else:
        p.setdefault("dashboard-host", "0.0.0.0")
    p.setdefault("metrics-export-port", str(METRICS_PORT))
    p["block"] = "true"
    p.setdefault("dashboard-agent-listen-port", str(DASHBOARD_AGENT_PORT))
    limits = resources.get("limits") or {}
    if "num-cpus" not in p and limits.get("cpu"):
        p["num-cpus"] = str(cpu_count(limits["cpu"]))
    if "memory" not in p and limits.get("memory"):
        p["memory"] = str(quantity_bytes(limits["memory"]))
    return p


def ray_start(node_type: str, params: dict[str, str]) -> str:
    """convertParamMap: ``--flag=value``, ``--flag`` for "true", nothing for "false" (but for a few flags)."""
    flags = ""
    for option in sorted(params):
        arg = params[option]
        if arg.lower() in ("true", "false") and option not in ("log-color", "include-dashboard"):
            if arg.lower() == "true":
                flags += f" --{option} "
        else:
            flags += f" --{option}={arg} "
    return ("ray start --head" if node_type == "head" else "ray start") + flags


def injected_probes(version: str, cluster: dict[str, Any], node_type: str) -> dict[str, Any]:
    """The probe KubeRay gives a Ray container that declares none (the same for readiness and liveness,
    but for the timings): exec wget before v1.6 or for Ray < 2.53, httpGet /api/healthz after."""
    delay, period, timeout, failures = INJECTED_PROBE_TIMING[version]
    probe: dict[str, Any] = {"initialDelaySeconds": delay, "periodSeconds": period, "timeoutSeconds": timeout,
                             "failureThreshold": failures}
    ray_version = tuple(int(x) for x in str(cluster["spec"].get("rayVersion", "0")).split(".")[:2])
    if version == "v1.7.0" and ray_version >= (2, 53):
        probe["httpGet"] = {"path": "/api/healthz", "port": DASHBOARD_AGENT_PORT}
    else:
        checks = [WGET[version].format(port=DASHBOARD_AGENT_PORT, path="api/local_raylet_healthz")]
        if node_type == "head":
            checks.append(WGET[version].format(port=8265, path="api/gcs_healthz"))
        probe["exec"] = {"command": ["bash", "-c", " && ".join(checks)]}
    return probe


def resolve_env(env: list[dict[str, Any]], pod: dict[str, str], secrets: dict[str, dict[str, str]]
                ) -> dict[str, str]:
    """What the kubelet puts in the environment: values, field refs, Secret keys (an optional one that is
    missing is left out; a required one fails the pod)."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e or "valueFrom" not in e:
            out[e["name"]] = str(e.get("value", ""))
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            out[e["name"]] = pod[src["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise AssertionError(f"pod would not start: Secret {ref['name']}/{ref['key']} is missing")
            out[e["name"]] = value
    return out


def build_pods(cluster: dict[str, Any], version: str, secrets: dict[str, dict[str, str]] | None = None,
               workers: int | None = None) -> list[Pod]:
    """The head and the workers (``workers`` per group, default its ``replicas``) of ``cluster``."""
    secrets = secrets or {}
    spec, name = cluster["spec"], cluster["metadata"]["name"]
    groups = [("head", "headgroup", spec["headGroupSpec"], 1)]
    groups += [("worker", g["groupName"], g, workers if workers is not None else g.get("replicas", 0))
               for g in spec.get("workerGroupSpecs", [])]
    pods = []
    for node_type, group, gspec, count in groups:
        for i in range(count):
            template = copy.deepcopy(gspec["template"]["spec"])
            c = template["containers"][0]
            pod_name = f"{name}-{'head' if node_type == 'head' else group + '-worker'}-{i}"
            params = start_params(cluster, node_type, dict(gspec.get("rayStartParams") or {}),
                                  c.get("resources") or {})
            start = ray_start(node_type, params)
            ulimit = "ulimit -n 65536" if version == "v1.1.0" else "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}"
            user_cmd = " ".join([*c.get("command", []), *c.get("args", [])])
            if "ray start" not in user_cmd:
                c["command"] = shell(version)
                c["args"] = [f"{user_cmd} && {ulimit}; {start}" if user_cmd else f"{ulimit}; {start}"]
            fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE,
                      "metadata.labels['ray.io/cluster']": name, "metadata.labels['ray.io/group']": group}
            env = list(c.get("env", []))
            ip = "127.0.0.1"
            if node_type == "worker":
                ip = fqdn(cluster)
                env += [{"name": "FQ_RAY_IP", "value": ip}, {"name": "RAY_IP", "value": head_service(cluster)}]
            env += [{"name": "RAY_CLUSTER_NAME", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.labels['ray.io/cluster']"}}}]
            if version == "v1.7.0":
                env += [{"name": "RAY_CLUSTER_NAMESPACE", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.namespace"}}}]
            env += [
                {"name": "RAY_CLOUD_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "RAY_NODE_TYPE_NAME", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.labels['ray.io/group']"}}},
                {"name": "KUBERAY_GEN_RAY_START_CMD", "value": start},
                {"name": "RAY_PORT", "value": HEAD_PORT},
                {"name": "RAY_ADDRESS", "value": f"{ip}:{HEAD_PORT}"},
                {"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"},
            ]
            if node_type == "head":
                env.append({"name": "RAY_USAGE_STATS_EXTRA_TAGS",
                            "value": f"kuberay_version={version};kuberay_crd=RayCluster"})
            if version == "v1.1.0":
                env.append({"name": "REDIS_PASSWORD", "value": ""})
            env.append({"name": "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "value": "1"})
            c["env"] = resolve_env(env, fields, secrets)
            for kind in ("readinessProbe", "livenessProbe"):
                c.setdefault(kind, injected_probes(version, cluster, node_type))
            volumes = list(template.get("volumes", []))
            if not any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts", [])):  # addEmptyDir
                volumes.append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
                c.setdefault("volumeMounts", []).append({"name": "shared-mem", "mountPath": "/dev/shm"})
            pod = Pod(pod_name, node_type, group, c, volumes, pod_security=template.get("securityContext") or {},
                      share_process_namespace=bool(template.get("shareProcessNamespace")))
            if node_type == "worker":
                pod.init_containers.append(wait_gcs_ready(version, cluster, gspec, fields, secrets))
            pods.append(pod)
    return pods


def wait_gcs_ready(version: str, cluster: dict[str, Any], gspec: dict[str, Any], fields: dict[str, str],
                   secrets: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The init container KubeRay puts before every worker: the Ray container's image, env and mounts,
    polling the head's GCS with ``ray health-check`` (bounded here: the real one loops until it answers)."""
    ray = gspec["template"]["spec"]["containers"][0]
    target = f"{fqdn(cluster)}:{HEAD_PORT}"
    script = textwrap.dedent(f"""
        SECONDS=0
        while true; do
            if (( SECONDS <= 120 )); then
                if ray health-check --address {target} > /dev/null 2>&1; then
                    echo "GCS is ready."
                    break
                fi
                echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."
            else
                if ray health-check --address {target}; then
                    echo "GCS is ready. Any error messages above can be safely ignored."
                    break
                fi
                echo "$SECONDS seconds elapsed: Still waiting for GCS to be ready."
            fi
            sleep 5
        done
    """)
    env = [*ray.get("env", []), {"name": "FQ_RAY_IP", "value": fqdn(cluster)},
           {"name": "RAY_IP", "value": head_service(cluster)}]
    return {"name": "wait-gcs-ready", "image": ray["image"], "command": shell(version), "args": [script],
            "env": resolve_env(env, fields, secrets), "volumeMounts": list(ray.get("volumeMounts", [])),
            "securityContext": copy.deepcopy(ray.get("securityContext") or {}),
            "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}}}
