"""Persistent SSH workers: one long-lived channel per slot that keeps its workspace, reports events as they
happen, and works on a host without an SFTP subsystem. Real OpenSSH servers on loopback, through the real CLI."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from distpar.testing.builders import fake_batch, independent_plan, make_repo, sh_git, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of, run_status, wait_for
from tests.ssh.conftest import SSHEnv, SSHServer, inventory, remote_processes, trust
from tests.ssh.test_ssh import FAKE, agents_on, start_run

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(180)]


def serve_workers(server: SSHServer) -> set[int]:
    """The persistent workers on the host: ``distpar.worker --serve`` processes whose parent is a supervisor
    (not the worker's own children in the moment between fork and exec, which share its command line)."""
    procs = dict(remote_processes(server.home))
    return {pid for pid, args in procs.items() if "distpar.worker --serve" in args
            and "distpar.worker.supervisor serve" in procs.get(_ppid(pid), "")}


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def run_id_on(server: SSHServer, before: set[Path]) -> str:
    """The id of the run whose directory (``<run id>-<host label>``) appeared on the host since ``before``."""
    (run_dir,) = set(server.runs_dir.iterdir()) - before
    return "-".join(run_dir.name.split("-")[:3])


def test_one_worker_process_keeps_its_workspace_across_units(two_hosts: tuple[SSHServer, SSHServer],
                                                             ssh_env: SSHEnv, tmp_path: Path) -> None:
    """Three units in a row on one slot: one remote worker process runs them all, in one workspace that keeps
    what the earlier units left there (an ignored cache: setup is paid once per worker, not per unit)."""
    h1, _ = two_hosts
    trust(h1)
    repo = make_repo(tmp_path / "repo", {".gitignore": "cache/\n", "README.md": "x\n"})
    batches = [fake_batch(i, writes={f"out{i}.txt": f"{i}\n"}, extra=[f"@fake append cache/units.txt unit{i}"])
               for i in (1, 2)]
    batches.append(fake_batch(3, writes={"out3.txt": "3\n"}, extra=["@fake append cache/units.txt unit3",
                                                                    "@fake sleep 4"]))
    plan = write_plan(tmp_path / "plan.md", batches)
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "1", *FAKE)
    pids: set[int] = set()
    cache: list[Path] = []
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        pids |= serve_workers(h1)
        cache = list(h1.runs_dir.glob("*/wt/w1/cache/units.txt"))
        if cache and "unit3" in cache[0].read_text():
            break
        time.sleep(0.05)
    assert cache, "the worker's workspace never had the cache file"
    assert cache[0].read_text() == "unit1\nunit2\nunit3\n"  # the same workspace, kept between the units
    pids |= serve_workers(h1)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert len(pids) == 1, f"one worker process for the whole run, saw {sorted(pids)}"
    assert [(repo / f"out{i}.txt").read_text() for i in (1, 2, 3)] == ["1\n", "2\n", "3\n"]
    assert "cache/units.txt" not in tree_files(repo)
    info = run_status(repo, run_id_of(stdout))
    assert {b["state"] for b in info["units"]} == {"ok"}
    assert not list(h1.runs_dir.glob(run_id_of(stdout) + "*"))  # the run directory is removed at the end


def test_unit_started_reaches_the_journal_while_the_agent_runs(two_hosts: tuple[SSHServer, SSHServer],
                                                               ssh_env: SSHEnv, repo: Path, tmp_path: Path) -> None:
    """The worker's ``unit_started`` comes back over the channel as it happens: the journal names the host
    while the agent is still at work (before the event, a submitted batch has no node)."""
    h1, _ = two_hosts
    trust(h1)
    plan = write_plan(tmp_path / "plan.md", [fake_batch(1, writes={"one.txt": "1\n"}, sleep=6)])
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1)])
    before = set(h1.runs_dir.iterdir()) if h1.runs_dir.exists() else set()
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), *FAKE)
    wait_for(lambda: agents_on(h1), what="the agent on the host")
    run_id = run_id_on(h1, before)

    def running_on_host() -> dict[str, Any] | None:
        (batch,) = run_status(repo, run_id)["units"]
        return batch if batch["state"] == "running" and batch["node"] == h1.address else None

    batch = wait_for(running_on_host, timeout=5, what="the journal to name the host of the running batch")
    assert agents_on(h1), "the agent had already ended: the event did not come as it happened"
    assert batch["attempt"] == 1
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert (repo / "one.txt").read_text() == "1\n"


def test_host_without_sftp_subsystem(start_sshd: Any, ssh_env: SSHEnv, tmp_path: Path) -> None:
    """A host whose sshd has no ``Subsystem sftp``: distpar, bundles and logs go over exec channels."""
    paramiko = pytest.importorskip("paramiko", reason="paramiko comes with the ssh extra: pip install 'distpar[ssh]'")
    bare = start_sshd("nosftp", sftp=False)
    trust(bare)
    client = paramiko.SSHClient()  # the premise: this server really refuses SFTP
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", bare.port, "root", key_filename=str(ssh_env.client_key), look_for_keys=False,
                   allow_agent=False)
    try:
        with pytest.raises(paramiko.SSHException):
            client.open_sftp()
    finally:
        client.close()
    serial_repo = make_repo(tmp_path / "serial" / "repo")
    repo = make_repo(tmp_path / "ssh" / "repo")
    batches = [*independent_plan(3), fake_batch(4, extra=["@fake append src/mod1.py '# from 4'"], depends_on=[1])]
    plan = write_plan(tmp_path / "plan.md", batches)
    serial = run_distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo)
    assert serial.returncode == 0, serial.stdout + serial.stderr
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(bare, 2)])
    out = run_distpar("-v", "run", str(plan), "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "2",
                      *FAKE, cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"host {bare.address}: no SFTP" in out.stderr and "files go over exec channels" in out.stderr
    assert "Channel closed" not in out.stdout
    assert tree_files(repo) == tree_files(serial_repo)
    run_id = run_id_of(out.stdout)
    info = run_status(repo, run_id)
    assert {b["node"] for b in info["units"]} == {bare.address}
    for b in info["units"]:  # the logs came back without SFTP too
        assert "--- distpar: unit" in Path(b["log_path"]).read_text()
    assert sh_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/") == "main"
    assert not list(bare.runs_dir.iterdir())
    assert not list((Path(os.environ["DISTPAR_HOME"]) / "runs" / run_id / "bundles").glob("*.bundle"))
