"""Every wait of the SSH backend ends: slots that share a connection take turns with its SFTP client (two threads
reading one client's channel hung the container tier: issue 21, item 13), and a worker's channel that carries
nothing, not even a heartbeat, is declared stalled, reported with its host, and its unit retried elsewhere.
Real OpenSSH servers on loopback, the real CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distpar.backends.base import RunContext
from distpar.backends.ssh import SSHBackend
from distpar.backends.ssh.connection import STALL_VAR, Stalled, watchdog
from distpar.coordinator.runtime import open_journal
from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_id_of, run_status, wait_for
from tests.ssh.conftest import SSHEnv, SSHServer, inventory, remote_processes, trust

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(180)]


def test_slots_sharing_a_connection_upload_at_the_same_time(two_hosts: tuple[SSHServer, SSHServer],
                                                           ssh_env: SSHEnv, tmp_path: Path) -> None:
    """Four slots on one connection upload different bundles at once, as units whose bases differ do (the
    container run hung here: two threads in one paramiko SFTP client, each reading the other's reply)."""
    h1, _ = two_hosts
    trust(h1)
    run_dir = tmp_path / "run"
    backend = SSHBackend([f"root@{h1.address}"], identity=ssh_env.client_key)
    backend.start(RunContext("20260101-000000-abcd", tmp_path, run_dir, 4))
    try:
        host = backend.hosts[0]
        assert len(host.slots) == 4
        wait_for(lambda: all(s.conn is not None for s in host.slots), what="the slots' connections")
        assert len({id(s.conn) for s in host.slots}) == 1
        files = []
        for i in range(4 * 6):
            f = tmp_path / "out" / f"unit{i}.bundle"
            f.parent.mkdir(exist_ok=True)
            f.write_bytes(os.urandom(64 * 1024 + i))
            files.append(f)
        done: list[str] = []
        errors: list[BaseException] = []

        def upload(k: int) -> None:
            try:
                for f in files[k::4]:
                    done.append(backend._upload(host.slots[k], str(f)))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not [t for t in threads if t.is_alive()], f"uploads still waiting after 60s ({len(done)} done)"
        assert not errors, errors
        assert len(done) == len(files)
        for f in files:
            remote = Path(host.run_dir) / "bundles" / f.name
            assert remote.read_bytes() == f.read_bytes()
    finally:
        backend.close()


def test_a_stalled_worker_is_reported_and_its_unit_moves(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                                         start_sshd: object, repo: Path, tmp_path: Path) -> None:
    """The remote worker stops answering mid-unit (its supervisor, worker and agent are SIGSTOPped: the host
    froze, the channel stays open): the watch sees no heartbeat, reports the host, and the unit runs elsewhere."""
    h1, h2 = two_hosts
    trust(h1, h2)
    plan = write_plan(tmp_path / "plan.md", [fake_batch("a", writes={"a.txt": "1\n"}, sleep=5),
                                             fake_batch("b", writes={"b.txt": "1\n"}, sleep=5)])
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h2, 1), (h1, 1)])
    stall = 4
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--backend", "ssh", "--hosts-file",
                             str(hosts), "--workers", "2", "--retries", "1", "--agent", "fake"], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, STALL_VAR: str(stall)})
    frozen: list[int] = []
    try:
        def agent_on_h2() -> list[tuple[int, str]]:
            procs = remote_processes(h2.home)
            return procs if any("distpar.testing.fake_agent" in a for _, a in procs) else []

        procs = wait_for(agent_on_h2, timeout=60, what="an agent at work on the first host")
        t0 = time.monotonic()
        for pid, args in procs:
            if "sshd" not in args:
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
        stdout, stderr = proc.communicate(timeout=90)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in frozen:  # whatever the run's cleanup did not kill may go on (and end: its channel is gone)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, stdout + stderr
    assert waited < stall + 60, waited
    run_id = run_id_of(stdout)
    events = open_journal(repo).events(run_id)
    stalled = [e for e in events if e.kind == "transport_stalled"]
    assert len(stalled) == 1 and stalled[0].data["host"] == h2.address, stalled
    unit = stalled[0].unit_id
    units = {u["unit_id"]: u for u in run_status(repo, run_id)["units"]}
    assert {u["state"] for u in units.values()} == {"ok"}
    assert units[unit]["node"] == h1.address  # the stalled unit ran again on the other host
    assert (repo / "a.txt").read_text() == "1\n" and (repo / "b.txt").read_text() == "1\n"
    retries = [e for e in events if e.kind == "unit_retry"]
    assert [e.unit_id for e in retries] == [unit], retries
    assert f"host {h2.address}: stalled: no word from its worker for" in retries[0].data["error"]
    assert f"host {h2.address}: stalled: no word from its worker for" in stderr
    # The cleanup reached the host (its sshd still answers): nothing of the run runs there (the autouse leak
    # check), and the run directory is kept with the unit's work that did not come back, as the warning says.
    assert f"host {h2.address}: kept " in stderr
    shutil.rmtree(h2.runs_dir)


def test_a_step_paramiko_would_wait_on_forever_is_cut_by_the_watchdog(two_hosts: tuple[SSHServer, SSHServer],
                                                                     ssh_env: SSHEnv, tmp_path: Path) -> None:
    """A session the host accepted and never answered blocks paramiko without a timeout: past its bound the
    watchdog closes the connection under the step, which ends the wait, and the step says it stalled."""
    h1, _ = two_hosts
    trust(h1)
    backend = SSHBackend([f"root@{h1.address}"], identity=ssh_env.client_key)
    backend.start(RunContext("20260101-000000-abce", tmp_path, tmp_path / "run", 1))
    try:
        conn = backend._connect(backend.hosts[0])
        channel = conn.transport.open_session()
        t0 = time.monotonic()
        with pytest.raises(Stalled, match=r"stalled: reading a reply got no answer for 1s"), \
                watchdog(conn, 1.0, "reading a reply"):
            channel.recv(1)  # nothing was asked: without the watchdog this waits for ever
        assert time.monotonic() - t0 < 10
        assert not conn.is_connected
        with watchdog(conn, 5.0, "nothing"):  # a step that ends in time is left alone
            pass
    finally:
        backend.close()
