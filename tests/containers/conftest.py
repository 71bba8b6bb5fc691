"""Real containers from the worker image (deploy/images), through testcontainers, against the local Docker engine.

The image is the one ``deploy/images/build.sh`` just built: ``$DISTPAR_WORKER_IMAGE`` (scripts/test.sh exports
it) or the tag the script wrote to ``deploy/.build/worker-image``; never ``:latest``, which may be stale. Without
a Docker engine or that image the tests skip with the reason; in CI (``CI=true``) they fail instead, loudly.

Every container and network is created by a fixture and removed in its ``finally`` (no Ryuk reaper); each
carries the label ``org.distpar.tests=<session id>``, and at the end of the session nothing with that label may
be left. Ports are published on 127.0.0.1 only, on ports the engine picks; nothing is pulled from a registry.
"""

from __future__ import annotations

import os

os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"  # before testcontainers reads its config

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import REPO_ROOT

IMAGE_VAR = "DISTPAR_WORKER_IMAGE"
IMAGE_FILE = REPO_ROOT / "deploy" / ".build" / "worker-image"
LABEL = "org.distpar.tests"
SESSION = uuid.uuid4().hex[:12]
BUILD_HINT = "build it with deploy/images/build.sh (scripts/test.sh and `make test` do)"


def unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI the container tier must run, so a missing engine or image is an error."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"container tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    problem = ""
    try:
        import docker
        import testcontainers.core.container  # noqa: F401
    except ImportError as exc:
        problem = f"the container tests need the docker SDK and testcontainers ({exc}): pip install -e '.[test]'"
    if problem:
        unavailable(problem)
    client = None
    try:
        if problem := engine_problem():  # before the SDK, which leaks a socket when the engine is not there
            unavailable(problem)
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        problem = f"no Docker engine answers ({type(exc).__name__}: {exc}); deploy/images/build.sh starts one"
        if client is not None:
            client.close()
    if problem:  # outside the except: pytest's failure must not chain the engine's traceback
        unavailable(problem)
    assert client is not None
    try:
        yield client
    finally:
        leftovers = client.containers.list(all=True, filters={"label": f"{LABEL}={SESSION}"})
        networks = client.networks.list(filters={"label": f"{LABEL}={SESSION}"})
        for c in leftovers:
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
        for n in networks:
            with contextlib.suppress(Exception):
                n.remove()
        client.close()
        assert not leftovers and not networks, (
            f"containers/networks left by the tests: {[c.name for c in leftovers]} {[n.name for n in networks]}")


def engine_problem() -> str:
    """Why the Docker engine cannot be reached ("" when its socket accepts a connection)."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(host.removeprefix("unix://"))
        elif host.startswith(("tcp://", "http://", "https://")):
            name, _, port = host.split("://", 1)[1].rstrip("/").rpartition(":")
            socket.create_connection((name, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        return f"no Docker engine at {host} ({exc}); deploy/images/build.sh starts one"
    return ""


@pytest.fixture(scope="session")
def worker_image(docker_client: Any) -> str:
    """The freshly built worker image's tag (never a stale ``:latest``)."""
    import docker

    tag = os.environ.get(IMAGE_VAR, "").strip()
    if tag.startswith(f"{IMAGE_VAR}="):  # the whole last line of build.sh
        tag = tag.split("=", 1)[1]
    if not tag and IMAGE_FILE.is_file():
        tag = IMAGE_FILE.read_text().strip()
    if not tag:
        unavailable(f"no worker image: neither ${IMAGE_VAR} nor {IMAGE_FILE.relative_to(REPO_ROOT)} is set; "
                    + BUILD_HINT)
    try:
        docker_client.images.get(tag)
        found = True
    except docker.errors.ImageNotFound:
        found = False
    if not found:
        unavailable(f"the worker image {tag} is not in the Docker engine; {BUILD_HINT}")
    return tag


@pytest.fixture(scope="module")
def network(docker_client: Any) -> Iterator[Any]:
    """A bridge network of the module's own (containers find each other by alias; the tests never need
    testcontainers to guess a network)."""
    from testcontainers.core.network import Network

    net = Network(docker_network_kw={"labels": {LABEL: SESSION}}).create()
    try:
        yield net
    finally:
        net.remove()


class Containers:
    """Starts containers from the worker image on one network; removes them all at the end (or one by one)."""

    def __init__(self, image: str, network: Any) -> None:
        self.image, self.network = image, network
        self.started: list[Any] = []

    def start(self, alias: str, command: list[str] | None = None, env: dict[str, str] | None = None,
              publish: tuple[int, ...] = (), aliases: tuple[str, ...] = (), tmpfs: dict[str, str] | None = None,
              binds: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """``tmpfs``: container path -> mount options; ``binds``: host path -> container path, read-only unless
        it ends in ``:rw``."""
        from testcontainers.core.container import DockerContainer

        c = DockerContainer(self.image)
        c.with_name(f"distpar-test-{SESSION}-{alias}-{uuid.uuid4().hex[:6]}")
        c.with_network(self.network).with_network_aliases(alias, *aliases)
        for port in publish:  # loopback only, host port picked by the engine (testcontainers binds 0.0.0.0)
            c.ports[f"{port}/tcp"] = ("127.0.0.1", None)
        for k, v in (env or {}).items():
            c.with_env(k, v)
        if command:
            c.with_command(command)
        for path, options in (tmpfs or {}).items():
            c.tmpfs[path] = options
        for host, path in (binds or {}).items():
            target, rw = (path[:-3], "rw") if path.endswith(":rw") else (path, "ro")
            c.with_volume_mapping(host, target, rw)
        c.with_kwargs(labels={LABEL: SESSION}, hostname=alias, **kwargs)
        self.started.append(c)
        c.start()
        return c

    def remove(self, c: Any) -> None:
        with contextlib.suppress(Exception):
            c.stop()
        if c in self.started:
            self.started.remove(c)

    def remove_all(self) -> None:
        for c in reversed(self.started[:]):
            self.remove(c)


@pytest.fixture(scope="module")
def containers(worker_image: str, network: Any) -> Iterator[Containers]:
    box = Containers(worker_image, network)
    try:
        yield box
    finally:
        box.remove_all()


# --- helpers -------------------------------------------------------------------------------------------------


def published_port(c: Any, port: int) -> int:
    """The loopback port the engine published ``port`` on."""
    c.reload()
    for binding in c.get_wrapped_container().ports.get(f"{port}/tcp") or []:
        if binding["HostIp"] == "127.0.0.1":
            return int(binding["HostPort"])
    raise AssertionError(f"port {port} of {c.get_wrapped_container().name} is not published on 127.0.0.1")


def exec_in(c: Any, command: str, check: bool = True, user: str = "") -> str:
    """``sh -c command`` in the container; its output (stdout and stderr)."""
    code, out = c.get_wrapped_container().exec_run(["sh", "-c", command], user=user)
    text = out.decode("utf-8", "replace")
    if check:
        assert code == 0, f"`{command}` in {c.get_wrapped_container().name} exited {code}: {text[-2000:]}"
    return text


def container_ip(c: Any, network: Any) -> str:
    c.reload()
    return str(c.get_wrapped_container().attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])


def logs_of(c: Any, tail: int = 40) -> str:
    with contextlib.suppress(Exception):
        return str(c.get_wrapped_container().logs(tail=tail).decode("utf-8", "replace"))
    return ""


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.25,
               on_timeout: Callable[[], str] = lambda: "") -> Any:
    """``cond()``'s first truthy value; AssertionError after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}. {on_timeout()}".strip())
        time.sleep(step)


def banner(port: int, prefix: bytes = b"SSH-") -> bool:
    """True once a server behind the published port answers (the engine's proxy accepts before it does)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(64).startswith(prefix)
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def home() -> Path:
    return Path(os.environ["HOME"])


@contextlib.contextmanager
def distpar(*args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """The real CLI in the background; killed on the way out if the test did not wait for it."""
    proc = subprocess.Popen([sys.executable, "-m", "distpar", *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()


def finished(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    """Exit code and output (stdout, then stderr) of a background run."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err
