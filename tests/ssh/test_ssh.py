"""The SSH backend against real OpenSSH servers on loopback (no mocks of SSH), through the real CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distpar.core.errors import ExitCode
from distpar.testing.builders import fake_batch, independent_plan, make_repo, sh_git, tree_files, write_plan
from tests.conftest import processes_with_mark, run_distpar, run_id_of, run_status, wait_for
from tests.ssh.conftest import (
    SSHEnv,
    SSHServer,
    descendants,
    free_port,
    inventory,
    keygen,
    remote_processes,
    trust,
)

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(180)]

FAKE = ("--agent", "fake")


def ssh(server: SSHServer, env: SSHEnv, command: str) -> str:
    """Run ``command`` on the host with the OpenSSH client (a second, independent view of the host)."""
    kh = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    proc = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(env.client_key), "-p", str(server.port), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def distpar_processes(server: SSHServer, env: SSHEnv, token: str) -> list[str]:
    """Remote workers, supervisors and this test's agents, as ``ps`` on the host shows them (only those working
    under the host's HOME: another test session on this machine has hosts of its own)."""
    out = ssh(server, env, "ps -eo pid,args")
    here = {pid for pid, _ in remote_processes(server.home)}
    return [line for line in out.splitlines() if line.split()[0].isdigit() and int(line.split()[0]) in here
            and ("distpar.worker" in line or "distpar.worker.supervisor serve" in line or token in line)]


def mixed_plan(token: str, sleep: float = 0.3) -> list[dict[str, Any]]:
    """Independent batches, a chain and a diamond with cross-worker dependencies (so bases move)."""
    tag = f"Test {token}."
    return [
        fake_batch("a", writes={"a.txt": "a\n"}, sleep=sleep, extra=[tag]),
        fake_batch("b", writes={"b.txt": "b\n"}, sleep=sleep, extra=[tag]),
        fake_batch("c", writes={"c.txt": "c\n"}, extra=[tag]),
        fake_batch("d", extra=["@fake append a.txt 'from d'", "@fake append b.txt 'from d'", tag],
                   depends_on=["a", "b"]),
        fake_batch("e", extra=["@fake append c.txt 'from e'", tag], depends_on=["c"]),
        fake_batch("f", extra=["@fake append a.txt 'from f'", tag], depends_on=["d"]),
    ]


def start_run(repo: Path, plan: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), *args], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})


def agents_on(server: SSHServer) -> list[tuple[int, str]]:
    return [p for p in remote_processes(server.home) if "distpar.testing.fake_agent" in p[1]]


# --- the plan across hosts ----------------------------------------------------------------------------------


def test_plan_across_two_hosts_equals_serial(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                             tmp_path: Path, isolated_env: str) -> None:
    h1, h2 = two_hosts
    trust(h1, h2)
    serial_repo = make_repo(tmp_path / "serial" / "repo")
    ssh_repo = make_repo(tmp_path / "ssh" / "repo")
    plan = write_plan(tmp_path / "plan.md", mixed_plan(isolated_env))
    serial = run_distpar("run", str(plan), "--workers", "1", *FAKE, cwd=serial_repo)
    assert serial.returncode == 0, serial.stderr
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 2), (h2, 2)])
    out = run_distpar("run", str(plan), "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "3", *FAKE,
                      cwd=ssh_repo)
    assert out.returncode == 0, out.stdout + out.stderr
    assert tree_files(ssh_repo) == tree_files(serial_repo)
    assert (ssh_repo / "a.txt").read_text() == "a\nfrom d\nfrom f\n"
    assert sh_git(ssh_repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/") == "main"
    # The journal records where each batch ran: both hosts, by their labels.
    run_id = run_id_of(out.stdout)
    info = run_status(ssh_repo, run_id)
    assert {b["state"] for b in info["units"]} == {"ok"}
    assert {b["node"] for b in info["units"]} == {h1.address, h2.address}
    # Batch logs came back to the coordinator; the remote run directories are gone.
    logs = Path(os.environ["DISTPAR_HOME"]) / "runs" / run_id / "logs"
    for b in info["units"]:
        assert b["log_path"] == str(logs / f"{b['unit_id']}.log")
        assert "--- distpar: unit" in Path(b["log_path"]).read_text()
    assert not (logs / "plan.md").exists()  # the copy of the plan each unit gets on its host stays there
    assert not list(h1.runs_dir.glob(f"{run_id}*")) and not list(h2.runs_dir.glob(f"{run_id}*"))
    assert not list((logs.parent / "bundles").glob("*.bundle"))


def test_hosts_flag_identity_and_ssh_config_alias(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                                  repo: Path, tmp_path: Path) -> None:
    h1, h2 = two_hosts
    trust(h1, h2)
    (Path(os.environ["HOME"]) / ".ssh" / "config").write_text(
        f"Host build1\n  HostName 127.0.0.1\n  Port {h1.port}\n  User root\n  IdentityFile {ssh_env.client_key}\n"
    )
    plan = write_plan(tmp_path / "plan.md", independent_plan(2))
    out = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"build1,root@{h2.address}",
                      "--identity", str(ssh_env.client_key), "--workers", "2", *FAKE, cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {b["node"] for b in run_status(repo, run_id_of(out.stdout))["units"]} == {"build1", h2.address}
    assert (repo / "src" / "mod1.py").exists() and (repo / "src" / "mod2.py").exists()


# --- security -----------------------------------------------------------------------------------------------


def test_unknown_host_key_refused_by_default_accepted_with_flag(two_hosts: tuple[SSHServer, SSHServer],
                                                                ssh_env: SSHEnv, repo: Path, tmp_path: Path) -> None:
    h1, _ = two_hosts
    plan = write_plan(tmp_path / "plan.md", independent_plan(1))
    args = ("run", str(plan), "--backend", "ssh", "--hosts", f"root@{h1.address}", "--identity",
            str(ssh_env.client_key), *FAKE)
    refused = run_distpar(*args, cwd=repo)
    assert refused.returncode == ExitCode.BACKEND, refused.stdout + refused.stderr
    assert "error: no SSH host is reachable:" in refused.stdout
    assert (f"host {h1.address}: host key ssh-ed25519 SHA256:" in refused.stdout
            and "is not in known_hosts: check it, then add it "
                f"(ssh-keyscan -p {h1.port} 127.0.0.1 >> ~/.ssh/known_hosts) or pass --accept-unknown-hosts"
            in refused.stdout)
    assert not (repo / "src" / "mod1.py").exists()
    accepted = run_distpar(*args, "--accept-unknown-hosts", cwd=repo)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert accepted.stderr.count(f"host {h1.address}: accepting unknown host key ssh-ed25519 SHA256:") == 1
    assert (repo / "src" / "mod1.py").exists()
    assert not (Path(os.environ["HOME"]) / ".ssh" / "known_hosts").exists()  # accepted for this run only


def test_changed_host_key_refused(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv, repo: Path,
                                  tmp_path: Path) -> None:
    h1, h2 = two_hosts
    kh = trust()
    kh.write_text(f"[127.0.0.1]:{h1.port} {h2.host_key_line}\n")  # someone else's key under h1's name
    plan = write_plan(tmp_path / "plan.md", independent_plan(1))
    out = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"root@{h1.address}", "--identity",
                      str(ssh_env.client_key), "--accept-unknown-hosts", *FAKE, cwd=repo)
    assert out.returncode == ExitCode.BACKEND
    assert f"host {h1.address}: host key does not match known_hosts" in out.stdout


def test_api_key_never_on_a_command_line_nor_in_journal_or_logs(
        two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv, repo: Path, tmp_path: Path,
        isolated_env: str) -> None:
    h1, h2 = two_hosts
    trust(h1, h2)
    key = f"sk-ant-dummy-{isolated_env}"
    batches = [fake_batch(i, writes={f"k{i}.txt": "x\n"}, sleep=3,
                          extra=["@fake print-env ANTHROPIC_API_KEY", f"Test {isolated_env}."]) for i in (1, 2)]
    plan = write_plan(tmp_path / "plan.md", batches)
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1), (h2, 1)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "2",
                     "--forward-env", "ANTHROPIC_API_KEY", *FAKE, env={"ANTHROPIC_API_KEY": key})
    seen_agents = 0
    while proc.poll() is None:
        for server in (h1, h2):
            listing = ssh(server, ssh_env, "ps -eo args")
            assert key not in listing
            seen_agents += listing.count(isolated_env)
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    assert seen_agents > 0  # the listing really covered the agents while they ran
    assert key not in stdout + stderr
    home = Path(os.environ["DISTPAR_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert home / "journal.db" in files
    for f in files:
        assert key.encode() not in f.read_bytes(), f"the key leaked into {f}"
    with sqlite3.connect(home / "journal.db") as db:
        dump = "\n".join(db.iterdump())
    assert key not in dump
    # The agents did get the key (their logs show it masked), and nothing of the run is left on the hosts.
    logs = list((home / "runs").glob("*/logs/1.log"))
    assert logs and "ANTHROPIC_API_KEY=***" in logs[0].read_text()
    assert not list(h1.runs_dir.glob("*/*")) and not list(h2.runs_dir.glob("*/*"))


# --- faults -------------------------------------------------------------------------------------------------


def test_host_refusing_connections_is_reported_per_host(two_hosts: tuple[SSHServer, SSHServer],
                                                       ssh_env: SSHEnv, repo: Path, tmp_path: Path) -> None:
    h1, _ = two_hosts
    trust(h1)
    dead = free_port()
    plan = write_plan(tmp_path / "plan.md", independent_plan(2))
    key = ("--identity", str(ssh_env.client_key))
    alone = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"root@127.0.0.1:{dead}", *key, *FAKE,
                        cwd=repo)
    assert alone.returncode == ExitCode.BACKEND
    assert f"error: no SSH host is reachable:\n  host 127.0.0.1:{dead}: connection refused\n" in alone.stdout
    assert not (repo / "src" / "mod1.py").exists()
    both = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"root@127.0.0.1:{dead},root@{h1.address}",
                       *key, "--workers", "2", *FAKE, cwd=repo)
    assert both.returncode == 0, both.stdout + both.stderr
    assert (f"host 127.0.0.1:{dead}: connection refused; its share of the work goes to the other hosts"
            in both.stderr)
    assert {b["node"] for b in run_status(repo, run_id_of(both.stdout))["units"]} == {h1.address}


def test_failed_authentication_is_reported_per_host(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                                    repo: Path, tmp_path: Path) -> None:
    h1, _ = two_hosts
    trust(h1)
    stranger = tmp_path / "stranger_ed25519"
    keygen(stranger)
    plan = write_plan(tmp_path / "plan.md", independent_plan(1))
    out = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"root@{h1.address}", "--identity",
                      str(stranger), *FAKE, cwd=repo)
    assert out.returncode == ExitCode.BACKEND
    assert f"host {h1.address}: authentication failed for user root with key {stranger}\n" in out.stdout


def connections(server: SSHServer) -> int:
    """SSH connections the server is serving now: its listener forks one process per connection."""
    return len([pid for pid in descendants(server.proc.pid) if _parent(pid) == server.proc.pid])


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.parametrize("max_sessions", [None, 2])
def test_slots_share_a_connection_per_four(start_sshd: Any, ssh_env: SSHEnv, tmp_path: Path,
                                           max_sessions: int | None) -> None:
    """Five slots on one host, five agents at once: two connections (four slots' workers on the first), not
    five handshakes. A host that allows fewer sessions per connection (MaxSessions 2) still runs every slot: a
    slot whose channel is refused gets a connection of its own."""
    host = start_sshd(f"shared-{max_sessions}", extra=f"MaxSessions {max_sessions}\n" if max_sessions else "")
    trust(host)
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.md", independent_plan(5, sleep=4))
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(host, 5)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "5", *FAKE)
    try:
        wait_for(lambda: len(agents_on(host)) == 5, what="five agents running at once")
        during = connections(host)
    finally:
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    if max_sessions is None:
        assert during == 2, during
    else:  # each worker holds a session: at most two per connection
        assert during >= 3, during
    assert all((repo / "src" / f"mod{i}.py").exists() for i in range(1, 6))


@pytest.mark.parametrize("retries", [1, 0])
def test_host_lost_mid_run(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv, start_sshd: Any,
                           tmp_path: Path, retries: int) -> None:
    h1, _ = two_hosts
    doomed = start_sshd("doomed")
    trust(h1, doomed)
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.md", independent_plan(4, sleep=3))
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 2), (doomed, 2)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "4",
                     "--retries", str(retries), *FAKE)
    wait_for(lambda: agents_on(doomed), what="agents on the doomed host")
    doomed.crash()
    stdout, stderr = proc.communicate(timeout=120)
    batches = run_status(repo, run_id_of(stdout))["units"]
    if retries:
        assert proc.returncode == 0, stdout + stderr
        assert all((repo / "src" / f"mod{i}.py").exists() for i in range(1, 5))
        assert {b["node"] for b in batches} == {h1.address}  # the doomed host's workers moved
        assert f"retrying on a worker (attempt 2): host {doomed.address}: connection lost while a worker ran" \
            in stderr
    else:  # the lost units fail (the executor journals the transport's message), the others are kept
        assert proc.returncode == ExitCode.BATCH_FAILED, stdout + stderr
        assert f"failed: host {doomed.address}: connection lost while a worker ran" in stdout
        assert not (repo / "src" / "mod1.py").exists()  # nothing landed: the target is unchanged
        assert sorted(b["state"] for b in batches).count("ok") == 2  # h1's work is kept on its branches
    assert f"host {doomed.address}: could not clean up" in stderr


def test_missing_tools_reported_per_host_before_anything_runs(two_hosts: tuple[SSHServer, SSHServer],
                                                             ssh_env: SSHEnv, start_sshd: Any, repo: Path,
                                                             tmp_path: Path) -> None:
    h1, _ = two_hosts
    bare = start_sshd("bare", env="PATH=/nonexistent")
    trust(h1, bare)
    plan = write_plan(tmp_path / "plan.md", independent_plan(2))
    key = ("--identity", str(ssh_env.client_key))
    out = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"root@{h1.address},root@{bare.address}",
                      *key, *FAKE, cwd=repo)
    assert out.returncode == ExitCode.BACKEND
    assert f"error: SSH hosts are not ready:\n  host {bare.address}: missing python3, git\n" in out.stdout
    assert "started batch" not in out.stderr and not (repo / "src" / "mod1.py").exists()
    assert not list(h1.runs_dir.glob(run_id_of(out.stdout) + "*"))  # the ready host's run directory is removed too
    # An agent CLI a host lacks is reported up front too (the runtime names the plan's agents), nothing runs.
    nothing = run_distpar("run", str(plan), "--backend", "ssh", "--hosts", f"root@{h1.address}", *key,
                          "--agent-cmd", "no-such-agent-cli {prompt}", cwd=repo)
    assert nothing.returncode == ExitCode.BACKEND
    assert f"host {h1.address}: missing agent executable 'no-such-agent-cli' (not on PATH)" in nothing.stdout
    assert "started batch" not in nothing.stderr


# --- process control ----------------------------------------------------------------------------------------


def test_interrupt_leaves_nothing_on_the_hosts(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                               repo: Path, tmp_path: Path, isolated_env: str) -> None:
    h1, h2 = two_hosts
    trust(h1, h2)
    batches = [fake_batch(i, extra=[f"@fake write partial{i}.txt 'half done'", "@fake sleep 120",
                                    f"Test {isolated_env}."]) for i in (1, 2, 3)]
    plan = write_plan(tmp_path / "plan.md", batches)
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1), (h2, 1)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "3", *FAKE)
    wait_for(lambda: len(list(h1.runs_dir.glob("*/wt/w*/partial*.txt"))) == 1
             and len(list(h2.runs_dir.glob("*/wt/w*/partial*.txt"))) == 1, what="agents at work on both hosts")
    assert distpar_processes(h1, ssh_env, isolated_env)
    # The sessions carry the test's mark, so the suite's process-leak check covers the hosts too.
    assert {pid for pid, _ in agents_on(h1) + agents_on(h2)} <= set(processes_with_mark(isolated_env, wait=0))
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, stdout + stderr
    for server in (h1, h2):
        assert distpar_processes(server, ssh_env, isolated_env) == []
        assert ssh(server, ssh_env, f"ls -A {server.runs_dir}") == ""  # the run directory is gone
    # The agents' unfinished work came back and is saved on refs in the coordinator's repository.
    assert "unfinished work saved on: " in stdout
    saved = sh_git(repo, "for-each-ref", "--format=%(refname)", "refs/distpar/").split()
    assert len([r for r in saved if "/saved/" in r]) == 2
    assert "not started: 3" in stdout or "3 interrupted" in stdout


def test_coordinator_killed_leaves_no_process_on_the_hosts(two_hosts: tuple[SSHServer, SSHServer],
                                                           ssh_env: SSHEnv, repo: Path, tmp_path: Path,
                                                           isolated_env: str) -> None:
    """A plain channel close (here: the coordinator is SIGKILLed) stops the remote worker and its agent; the
    run directory stays, since it holds the work that could not come back."""
    h1, _ = two_hosts
    trust(h1)
    batches = [fake_batch(1, extra=["@fake write partial.txt 'half done'", "@fake spawn-child", "@fake sleep 120",
                                    f"Test {isolated_env}."])]
    plan = write_plan(tmp_path / "plan.md", batches)
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), *FAKE)
    wait_for(lambda: agents_on(h1) and list(h1.runs_dir.glob("*/wt/w1/partial.txt")), what="the agent at work")
    proc.kill()
    proc.communicate()
    wait_for(lambda: distpar_processes(h1, ssh_env, isolated_env) == [], timeout=30,
             what="the remote processes to stop")
    assert not [p for p in remote_processes(h1.home) if "sleep" in p[1]]  # the agent's child too
    runs = list(h1.runs_dir.iterdir())
    assert len(runs) == 1
    bundles = list((runs[0] / "wt").glob("*.bundle"))
    assert bundles  # the worker saved the agent's work before it stopped
    heads = subprocess.run(["git", "bundle", "list-heads", str(bundles[0])], capture_output=True, text=True)
    assert "/saved/" in heads.stdout
    subprocess.run(["rm", "-rf", str(runs[0])], check=True)


def test_repo_url_mode(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv, repo: Path, tmp_path: Path) -> None:
    """With --repo-url the hosts fetch the code from the remote and push their branches there themselves."""
    h1, h2 = two_hosts
    trust(h1, h2)
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(repo), str(remote)], check=True)
    plan = write_plan(tmp_path / "plan.md", independent_plan(3))
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 2), (h2, 2)])
    out = run_distpar("run", str(plan), "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "3",
                      "--repo-url", str(remote), *FAKE, cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all((repo / "src" / f"mod{i}.py").exists() for i in (1, 2, 3))
    run_id = run_id_of(out.stdout)
    pushed = sh_git(remote, "for-each-ref", "--format=%(refname)", f"refs/heads/distpar/{run_id}/")
    assert len(pushed.split()) == 3  # the units' branches went through the remote
    assert {b["node"] for b in run_status(repo, run_id)["units"]} == {h1.address, h2.address}


def test_python_api(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv, repo: Path, tmp_path: Path) -> None:
    """The backend in-process (as the runtime uses it): results name their host, logs are local copies."""
    from tests.integration.conftest import run_plan

    h1, h2 = two_hosts
    trust(h1, h2)
    shared = h1.home / "shared-workdir"  # both "hosts" are this machine: like a home directory on NFS
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1), (h2, 1)], workdir=str(shared))
    report, runner = run_plan(repo, independent_plan(2), workers=2, backend="ssh",
                              backend_options={"hosts": [], "hosts_file": hosts, "identity": None,
                                               "accept_unknown_hosts": False})
    assert report.exit_code == ExitCode.OK, report.errors
    assert {r.node for r in report.results} == {h1.address, h2.address}
    for r in report.results:
        assert r.log_path and Path(r.log_path).is_relative_to(runner.run_dir / "logs") and Path(r.log_path).exists()
    assert shared.is_dir() and not list(shared.iterdir())  # per-run directories were made there, and removed


def test_resume_an_interrupted_ssh_run(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv, repo: Path,
                                       tmp_path: Path) -> None:
    h1, h2 = two_hosts
    trust(h1, h2)
    plan = write_plan(tmp_path / "plan.md", [fake_batch(i, writes={f"r{i}.txt": "x\n"}, sleep=120) for i in (1, 2)])
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1), (h2, 1)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--workers", "2", *FAKE)
    wait_for(lambda: agents_on(h1) and agents_on(h2), what="agents on both hosts")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, stdout + stderr
    write_plan(plan, [fake_batch(i, writes={f"r{i}.txt": "x\n"}) for i in (1, 2)])  # same batches, no sleep
    resumed = run_distpar("resume", run_id_of(stdout), cwd=repo)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (repo / "r1.txt").exists() and (repo / "r2.txt").exists()


def test_killed_supervisor_is_retried_without_a_stray_worker(two_hosts: tuple[SSHServer, SSHServer],
                                                             ssh_env: SSHEnv, repo: Path, tmp_path: Path) -> None:
    """If the process that watches a worker dies, its worker and agent are killed before the unit is retried."""
    h1, _ = two_hosts
    trust(h1)
    plan = write_plan(tmp_path / "plan.md", [fake_batch(1, writes={"one.txt": "1\n"}, sleep=3)])
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1)])
    proc = start_run(repo, plan, "--backend", "ssh", "--hosts-file", str(hosts), "--retries", "1", *FAKE)
    wait_for(lambda: agents_on(h1), what="the agent on the host")
    first = agents_on(h1)[0][0]
    supervisors = [pid for pid, args in remote_processes(h1.home) if "distpar.worker.supervisor serve" in args]
    assert len(supervisors) == 1
    os.kill(supervisors[0], signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{first}").exists(), timeout=10, what="the first agent to be killed")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert "retrying on a worker (attempt 2): host" in stderr and "the worker failed (killed by a signal)" in stderr
    assert (repo / "one.txt").read_text() == "1\n"


def test_a_preset_of_my_own_runs_on_ssh_hosts_by_value(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                                       tmp_path: Path, repo: Path) -> None:
    """``distpar.run(..., agent=MyPreset)``: the preset lives in this test module, which no host can import;
    it travels by value (cloudpickle, shipped to the hosts with distpar)."""
    import distpar
    from tests.integration.test_api import my_preset

    h1, h2 = two_hosts
    trust(h1, h2)
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 1), (h2, 1)])
    plan = write_plan(tmp_path / "plan.md", independent_plan(2))
    report = distpar.run(plan, repo=repo, workers=2, agent=my_preset(), backend="ssh",
                         backend_options={"hosts": [], "hosts_file": hosts, "identity": None,
                                          "accept_unknown_hosts": False})
    assert report.exit_code == 0, [r.error for r in report.results] + report.errors
    assert all(r.outcome and r.outcome.message == "read by my own preset" for r in report.results)
    assert {r.node for r in report.results} <= {h1.address, h2.address}
