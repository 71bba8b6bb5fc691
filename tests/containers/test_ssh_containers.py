"""The SSH backend against sshd in worker-image containers, through the real CLI: ports published on 127.0.0.1,
a client key pair of the session's own (authorized through ``SSH_AUTHORIZED_KEYS``), host keys read back from
the containers into the test's known_hosts, so host key checking stays on."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distpar.coordinator.runtime import open_journal
from distpar.testing.builders import fake_batch, independent_plan, make_repo, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of, run_status
from tests.containers.conftest import (
    Containers,
    banner,
    distpar,
    exec_in,
    finished,
    home,
    logs_of,
    published_port,
    wait_until,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(240)]

FAKE = ("--agent", "fake")
RUNS_DIR = "/root/.cache/distpar/runs"  # the backend's default workdir, for root
REMOTE = ("distpar.worker", "distpar.worker.supervisor", "distpar.testing.fake_agent")


@dataclass
class SSHContainer:
    container: Any
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key}\n"

    def sh(self, command: str, check: bool = True) -> str:
        return exec_in(self.container, command, check)

    def processes(self) -> list[str]:
        """distpar's remote processes in the container (worker, supervisor, fake agent)."""
        return [line for line in self.sh("ps -eo pid,args").splitlines() if any(p in line for p in REMOTE)]


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh-client") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "distpar-tests", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    return key


def start_sshd(containers: Containers, alias: str, client_key: Path) -> SSHContainer:
    pub = client_key.with_suffix(".pub").read_text().strip()
    c = containers.start(alias, env={"SSH_AUTHORIZED_KEYS": pub}, publish=(22,), init=True)
    port = published_port(c, 22)
    wait_until(lambda: banner(port), 60, f"sshd in {alias} on 127.0.0.1:{port}", on_timeout=lambda: logs_of(c))
    host_key = exec_in(c, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()
    return SSHContainer(c, port, " ".join(host_key[:2]))


@pytest.fixture(scope="module")
def two_hosts(containers: Containers, client_key: Path) -> tuple[SSHContainer, SSHContainer]:
    return start_sshd(containers, "ssh1", client_key), start_sshd(containers, "ssh2", client_key)


@pytest.fixture(autouse=True)
def nothing_left_in_the_containers(two_hosts: tuple[SSHContainer, SSHContainer]) -> Iterator[None]:
    """After each test no distpar process runs in the shared containers and no run directory is left (what a
    failed test left is removed first, so that one failure does not fail the next tests)."""
    yield
    problems = []
    for h in two_hosts:
        with contextlib.suppress(AssertionError):
            wait_until(lambda h=h: not h.processes(), 15, f"distpar processes in {h.address} to stop")
        if left := h.processes():
            problems.append(f"distpar processes left on {h.address}: {left}")
            h.sh("pkill -KILL -f 'distpar[.]'", check=False)
        if left := h.sh(f"ls -A {RUNS_DIR} 2>/dev/null || true").split():
            problems.append(f"run directories left on {h.address}: {left}")
            h.sh(f"rm -rf {RUNS_DIR}")
    assert not problems, "\n".join(problems)


def trust(*hosts: SSHContainer) -> None:
    """The containers' host keys in the test's own ~/.ssh/known_hosts (HOME is per test)."""
    ssh = home() / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    with (ssh / "known_hosts").open("a") as f:
        f.writelines(h.known_hosts_line for h in hosts)


def hosts_args(key: Path, *hosts: SSHContainer) -> tuple[str, ...]:
    return ("--backend", "ssh", "--hosts", ",".join(f"root@{h.address}" for h in hosts), "--identity", str(key))


def test_plan_across_two_containers_equals_serial(two_hosts: tuple[SSHContainer, SSHContainer], client_key: Path,
                                                  tmp_path: Path) -> None:
    h1, h2 = two_hosts
    trust(h1, h2)
    batches = [
        fake_batch("a", writes={"a.txt": "a\n"}, sleep=1),
        fake_batch("b", writes={"b.txt": "b\n"}, sleep=1),
        fake_batch("c", writes={"c.txt": "c\n"}, sleep=1),
        fake_batch("d", extra=["@fake append a.txt 'from d'", "@fake append b.txt 'from d'"], depends_on=["a", "b"]),
        fake_batch("e", extra=["@fake append c.txt 'from e'"], depends_on=["c"]),
        fake_batch("f", extra=["@fake append a.txt 'from f'"], depends_on=["d"]),
    ]
    plan = write_plan(tmp_path / "plan.md", batches)
    serial_repo, repo = make_repo(tmp_path / "serial" / "repo"), make_repo(tmp_path / "ssh" / "repo")
    with distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo) as serial:  # the reference tree
        out = run_distpar("run", str(plan), *hosts_args(client_key, h1, h2), "--workers", "4", *FAKE, cwd=repo,
                          timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        code, text = finished(serial)
        assert code == 0, text
    assert tree_files(repo) == tree_files(serial_repo)
    assert (repo / "a.txt").read_text() == "a\nfrom d\nfrom f\n"
    info = run_status(repo, run_id_of(out.stdout))
    assert {b["state"] for b in info["units"]} == {"ok"}
    assert {b["node"] for b in info["units"]} == {h1.address, h2.address}  # both containers did work


def test_container_stopped_mid_run_moves_its_workers(containers: Containers, two_hosts: tuple[SSHContainer, ...],
                                                    client_key: Path, tmp_path: Path) -> None:
    h1 = two_hosts[0]
    doomed = start_sshd(containers, "doomed", client_key)
    try:
        trust(h1, doomed)
        plan = write_plan(tmp_path / "plan.md", independent_plan(4, sleep=4))
        serial_repo, repo = make_repo(tmp_path / "serial" / "repo"), make_repo(tmp_path / "ssh" / "repo")
        with distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo) as serial, \
                distpar("run", str(plan), *hosts_args(client_key, h1, doomed), "--workers", "4", "--retries", "2",
                        *FAKE, cwd=repo) as proc:
            wait_until(lambda: any("distpar.testing.fake_agent" in p for p in doomed.processes()), 90,
                       "an agent at work in the doomed container")
            doomed.container.get_wrapped_container().kill()  # the host is gone, mid-batch
            code, text = finished(proc)
            assert code == 0, text
            assert finished(serial)[0] == 0
        assert tree_files(repo) == tree_files(serial_repo)  # nothing lost
        run_id = run_id_of(text)
        batches = run_status(repo, run_id)["units"]
        assert [b["state"] for b in batches] == ["ok"] * 4
        assert {b["node"] for b in batches} == {h1.address}  # the doomed container's workers moved
        journal = open_journal(repo)
        retries = [e for e in journal.events(run_id) if e.kind == "unit_retry"]
        assert retries and all(doomed.address in e.data["error"] for e in retries), retries
        assert f"host {doomed.address}: could not clean up" in text
    finally:
        containers.remove(doomed.container)
