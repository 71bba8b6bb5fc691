"""deploy/k8s/raycluster.yaml as KubeRay v1.1 and v1.7 would run it, in containers (no Kubernetes here).

For each version the pods KubeRay builds from the manifest (tests/containers/kuberay.py) run as containers: the
generated command (``bash -lc`` / ``bash -c`` with ``ulimit ...; ray start ...``), the injected environment,
the ConfigMap file mounted at its subPath, emptyDirs as tmpfs, the securityContext (uid 1000, no capabilities,
no privilege escalation), the limits, the head service's DNS names as network aliases, and the wait-gcs-ready
init container before each worker. The kubelet's part is played by the test: it runs every probe as declared
(httpGet against the pod's IP) until each pod is Ready, as KubeRay's RayClusterProvisioned waits for. The driver
connects through the head's client port published on 127.0.0.1 (what ``kubectl port-forward`` gives) and a plan
runs on both workers. Only the image tag differs from the manifest: the freshly built one.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from distpar.backends import raycompat
from distpar.backends.ray import SLOT
from distpar.coordinator.runtime import open_journal
from distpar.testing.builders import fake_batch, make_repo, sh_git, tree_files, write_plan
from tests.conftest import REPO_ROOT, run_distpar
from tests.containers import kuberay
from tests.containers.conftest import (
    Containers,
    container_ip,
    distpar,
    exec_in,
    finished,
    logs_of,
    published_port,
    tcp_open,
    wait_until,
)
from tests.containers.test_ray_containers import image_has_this_distpar, ray_client_ready

pytestmark = [pytest.mark.containers, pytest.mark.timeout(420)]
log = logging.getLogger(__name__)

MANIFEST = REPO_ROOT / "deploy" / "k8s" / "raycluster.yaml"
CLIENT_PORT = 10001
FAKE = ("--agent", "fake")
AGENT_KEY = "sk-test-not-a-real-key-4b1d"  # what the optional Secret holds in the v1.7 cluster


def manifest() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ConfigMap and the RayCluster of deploy/k8s/raycluster.yaml."""
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the ray extra: pip install 'distpar[ray]'")
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    return by_kind["ConfigMap"], by_kind["RayCluster"]


def docker_user(pod: kuberay.Pod) -> str:
    sc = {**pod.pod_security, **(pod.container.get("securityContext") or {})}
    return f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}" if "runAsUser" in sc else ""


@dataclass
class KubeCluster:
    version: str
    containers: Containers
    network: Any
    cluster: dict[str, Any]
    configmap_dir: Path
    pods: dict[str, Any] = field(default_factory=dict)  # pod name -> container
    specs: dict[str, kuberay.Pod] = field(default_factory=dict)
    port: int = 0

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.port}"

    def run_args(self, pod: kuberay.Pod, c: dict[str, Any]) -> dict[str, Any]:
        """docker-run arguments that give container ``c`` of ``pod`` what the kubelet would."""
        volumes = {v["name"]: v for v in pod.volumes}
        tmpfs, binds = {}, {}
        for m in c.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "emptyDir" in v:
                size = v["emptyDir"].get("sizeLimit")
                tmpfs[m["mountPath"]] = f"mode=1777,size={kuberay.quantity_bytes(size)}" if size else "mode=1777"
            elif "configMap" in v:
                src = self.configmap_dir / v["configMap"]["name"]
                binds[str(src / m["subPath"]) if "subPath" in m else str(src)] = m["mountPath"]
            else:
                raise AssertionError(f"volume {m['name']} of {pod.name}: not emulated")
        sc = {**pod.pod_security, **(c.get("securityContext") or {})}
        limits = (c.get("resources") or {}).get("limits") or {}
        args: dict[str, Any] = {
            "entrypoint": c["command"], "command": c["args"], "env": c["env"], "tmpfs": tmpfs, "binds": binds,
            "user": docker_user(pod), "init": pod.share_process_namespace,  # the pause container reaps orphans
            "cap_drop": sc.get("capabilities", {}).get("drop", []),
            "security_opt": ["no-new-privileges:true"] if sc.get("allowPrivilegeEscalation") is False else [],
        }
        if "fsGroup" in sc:
            args["group_add"] = [str(sc["fsGroup"])]
        if "cpu" in limits:
            args["nano_cpus"] = int(float(str(limits["cpu"]).rstrip("m")) * (1e6 if str(limits["cpu"]).endswith("m")
                                                                              else 1e9))
        if "memory" in limits:
            args["mem_limit"] = kuberay.quantity_bytes(limits["memory"])
        return args

    def start_pod(self, pod: kuberay.Pod) -> Any:
        for init in pod.init_containers:  # run to completion first, like the kubelet
            a = self.run_args(pod, init)
            ic = self.containers.start(f"{pod.name}-{init['name']}", a.pop("command"), a.pop("env"), **a)
            try:
                wait_until(lambda ic=ic: _exited(ic), 180, f"{init['name']} of {pod.name} to finish",
                           step=1, on_timeout=lambda ic=ic: logs_of(ic))
                code = ic.get_wrapped_container().attrs["State"]["ExitCode"]
                assert code == 0, f"{init['name']} of {pod.name} exited {code}: {logs_of(ic)}"
                assert "GCS is ready." in logs_of(ic, 50)
            finally:
                self.containers.remove(ic)
        a = self.run_args(pod, pod.container)
        aliases: tuple[str, ...] = ()
        publish: tuple[int, ...] = ()
        if pod.node_type == "head":
            aliases, publish = (kuberay.head_service(self.cluster), kuberay.fqdn(self.cluster)), (CLIENT_PORT,)
        # restartPolicy Always: a Ray container that exits (a node that could not register in time on a loaded
        # host) is started again, as the kubelet would.
        c = self.containers.start(pod.name, a.pop("command"), a.pop("env"), publish=publish, aliases=aliases,
                                  restart_policy={"Name": "always"}, **a)
        self.pods[pod.name], self.specs[pod.name] = c, pod
        return c

    def probe(self, name: str, kind: str) -> tuple[bool, str]:
        """One probe of pod ``name`` as the kubelet runs it."""
        p, c = self.specs[name].container[kind], self.pods[name]
        if "httpGet" in p:
            url = f"http://{container_ip(c, self.network)}:{p['httpGet']['port']}{p['httpGet'].get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=p.get("timeoutSeconds", 1)) as resp:
                    return 200 <= resp.status < 400, resp.read().decode("utf-8", "replace")
            except (urllib.error.URLError, OSError) as exc:
                return False, f"{url}: {exc}"
        code, out = c.get_wrapped_container().exec_run(p["exec"]["command"], user=docker_user(self.specs[name]))
        return code == 0, out.decode("utf-8", "replace")

    def wait_ready(self, name: str) -> str:
        """Readiness as the kubelet decides it: probed after initialDelaySeconds every periodSeconds; the pod
        fails the test if it is not Ready within its failureThreshold (plus slack for a loaded machine)."""
        p = self.specs[name].container["readinessProbe"]
        deadline = time.monotonic() + p.get("initialDelaySeconds", 0) + 2 * p.get("periodSeconds", 10) * p.get(
            "failureThreshold", 3) + 60
        time.sleep(min(p.get("initialDelaySeconds", 0), 10))
        last = ""
        while time.monotonic() < deadline:
            ok, last = self.probe(name, "readinessProbe")
            if ok:
                return last
            time.sleep(min(p.get("periodSeconds", 10), 5))
        raise AssertionError(f"pod {name} never became Ready: {last}\n{logs_of(self.pods[name])}")


def _exited(c: Any) -> bool:
    c.get_wrapped_container().reload()
    return bool(c.get_wrapped_container().status == "exited")


@pytest.fixture(scope="module", params=["v1.1.0", "v1.7.0"])
def kube(request: pytest.FixtureRequest, containers: Containers, network: Any,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    import ray

    version = request.param
    configmap, cluster = manifest()
    cm_dir = tmp_path_factory.mktemp(f"configmaps-{version}")
    (cm_dir / configmap["metadata"]["name"]).mkdir()
    for key, text in configmap["data"].items():
        f = cm_dir / configmap["metadata"]["name"] / key
        f.write_text(text)
        f.chmod(0o644)
    for spec in (cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]):
        for c in spec["template"]["spec"]["containers"]:
            c["image"] = containers.image  # what `kind load docker-image` + the image field do
    secrets = {"distpar-agent-keys": {"ANTHROPIC_API_KEY": AGENT_KEY}} if version == "v1.7.0" else {}
    kc = KubeCluster(version, containers, network, cluster, cm_dir)
    pods = kuberay.build_pods(cluster, version, secrets)
    head = next(p for p in pods if p.node_type == "head")
    t0 = time.monotonic()
    head_c = kc.start_pod(head)
    image_has_this_distpar(head_c, containers.image)
    kc.port = published_port(head_c, CLIENT_PORT)
    log.info("%s head ready: %s", version, kc.wait_ready(head.name))
    for pod in pods:
        if pod.node_type == "worker":
            kc.start_pod(pod)
    for pod in pods:
        kc.wait_ready(pod.name)
    log.info("%s: every pod Ready after %.1fs", version, time.monotonic() - t0)
    wait_until(lambda: tcp_open(kc.port), 60, "the published client port")
    ray_client_ready(kc.address, on_timeout=lambda: logs_of(head_c))
    try:
        yield kc
    finally:
        raycompat.shutdown(ray)
        for name in reversed(list(kc.pods)):
            containers.remove(kc.pods.pop(name))


def test_kuberay_pods_run_with_the_generated_commands(kube: KubeCluster) -> None:
    import ray

    for name, pod in kube.specs.items():
        c = pod.container
        assert c["command"] == kuberay.shell(kube.version)  # what KubeRay puts there, not the image's entrypoint
        assert "ray start" in c["args"][0] and "--block" in c["args"][0]
        assert exec_in(kube.pods[name], "id -u").strip() == "1000"  # the securityContext holds
        for kind in ("readinessProbe", "livenessProbe"):
            ok, text = kube.probe(name, kind)
            assert ok, f"{kind} of {name} failed: {text}"
            assert "raylet: success" in text, text
    slots = {n["NodeManagerAddress"]: n["Resources"].get(SLOT, 0) for n in ray.nodes() if n["Alive"]}
    assert sorted(slots.values()) == [0, 4, 4], slots  # the head runs no agents; KubeRay's quoted resources parse
    head = next(p for p in kube.specs.values() if p.node_type == "head")
    cpus = {n["NodeManagerAddress"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
    assert cpus[container_ip(kube.pods[head.name], kube.network)] == 0


def test_kuberay_injected_probes_would_fail_without_the_declared_ones(kube: KubeCluster) -> None:
    """Why the manifest declares its probes: what v1.1 injects in their place needs wget, which the image lacks;
    what v1.7 injects for Ray >= 2.53 is the declared httpGet."""
    name = next(n for n, p in kube.specs.items() if p.node_type == "worker")
    injected = kuberay.injected_probes(kube.version, kube.cluster, "worker")
    if kube.version == "v1.1.0":
        code, out = kube.pods[name].get_wrapped_container().exec_run(injected["exec"]["command"], user="1000:1000")
        assert code != 0 and "wget" in out.decode(), out
    else:
        assert injected["httpGet"] == kube.specs[name].container["readinessProbe"]["httpGet"]


def test_plan_runs_on_the_kuberay_cluster(kube: KubeCluster, tmp_path: Path) -> None:
    batches = [fake_batch(x, writes={f"{x}.txt": f"{x}\n"}, sleep=2) for x in "abcd"]
    batches.append(fake_batch("e", extra=["@fake append a.txt 'from e'"], depends_on=["a", "b"]))
    plan = write_plan(tmp_path / "plan.md", batches)
    serial_repo, repo = make_repo(tmp_path / "serial" / "repo"), make_repo(tmp_path / "k8s" / "repo")
    with distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo) as serial:
        out = run_distpar("run", str(plan), "--backend", "ray", "--ray-address", kube.address, "--workers", "4",
                          *FAKE, cwd=repo, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert finished(serial)[0] == 0
    assert tree_files(repo) == tree_files(serial_repo)
    run_id = out.stdout.split()[1].rstrip(":")
    rows = open_journal(repo).units(run_id)
    assert [r["state"] for r in rows] == ["ok"] * len(batches)
    import ray

    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(SLOT)}
    assert {r["node"] for r in rows} <= workers and len({r["node"] for r in rows}) == 2, rows


def test_agent_key_from_the_secret_reaches_the_workers_only_by_reference(kube: KubeCluster) -> None:
    """The optional secretKeyRef: with the Secret (v1.7 run) the workers' Ray has the key; without it (v1.1 run)
    the pods still start and the variable is absent."""
    for name, pod in kube.specs.items():
        if pod.node_type != "worker":
            continue
        raylet_env = exec_in(kube.pods[name], "tr '\\0' '\\n' < /proc/$(pgrep -f -o raylet)/environ")
        if kube.version == "v1.7.0":
            assert f"ANTHROPIC_API_KEY={AGENT_KEY}" in raylet_env.splitlines()
        else:
            assert "ANTHROPIC_API_KEY=" not in raylet_env
    _, cluster = manifest()
    assert AGENT_KEY not in json.dumps(cluster)  # the manifest names the Secret, never holds the key


def test_coordinator_job_runs_the_plan_inside_the_cluster(kube: KubeCluster, tmp_path: Path) -> None:
    """deploy/k8s/coordinator-job.yaml's container, as the kubelet would run it next to the cluster: it clones
    the repository, runs the plan through the head service's name and pushes the result branch back."""
    if kube.version != "v1.7.0":
        pytest.skip("the Job runs once, next to the v1.7 cluster: it does not depend on the KubeRay version")
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the ray extra: pip install 'distpar[ray]'")
    job = yaml.safe_load((REPO_ROOT / "deploy" / "k8s" / "coordinator-job.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    batches = [fake_batch(x, writes={f"{x}.txt": f"{x}\n"}, sleep=1) for x in "abc"]
    work = make_repo(tmp_path / "work")
    write_plan(work / "plan.md", batches)
    sh_git(work, "add", "plan.md")
    sh_git(work, "commit", "-q", "-m", "plan")
    origin = tmp_path / "origin.git"
    sh_git(tmp_path, "clone", "-q", "--bare", str(work), str(origin))
    subprocess.run(["chown", "-R", "1000:1000", str(origin)], check=True)
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["RAY_ADDRESS"] == f"ray://{kuberay.head_service(kube.cluster)}:{CLIENT_PORT}"
    env.update(REPO_URL="file:///srv/origin.git", DISTPAR_ARGS="--workers 3 --agent fake")
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmpfs = {m["mountPath"]: "mode=1777" for m in c["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    sc = {**pod["securityContext"], **c["securityContext"]}
    coord = kube.containers.start(
        "distpar-run", None, env, entrypoint=c["command"], tmpfs=tmpfs, binds={str(origin): "/srv/origin.git:rw"},
        user=f"{sc['runAsUser']}:{sc['runAsGroup']}", cap_drop=c["securityContext"]["capabilities"]["drop"],
        security_opt=["no-new-privileges:true"])
    try:
        wait_until(lambda: _exited(coord), 300, "the coordinator Job to finish", step=1,
                   on_timeout=lambda: logs_of(coord, 80))
        code = coord.get_wrapped_container().attrs["State"]["ExitCode"]
        assert code == 0, logs_of(coord, 80)
    finally:
        kube.containers.remove(coord)
    subprocess.run(["chown", "-R", "0:0", str(origin)], check=True)  # git refuses a repository of another user
    serial = make_repo(tmp_path / "serial")
    write_plan(serial / "plan.md", batches)
    sh_git(serial, "add", "plan.md")
    sh_git(serial, "commit", "-q", "-m", "plan")
    assert run_distpar("run", "plan.md", "--workers", "1", *FAKE, cwd=serial).returncode == 0
    result = sh_git(origin, "rev-parse", "--verify", f"refs/heads/{env['RESULT_BRANCH']}").strip()
    assert tree_files(origin, result) == tree_files(serial)
