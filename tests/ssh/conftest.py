"""Real OpenSSH servers on loopback ports for the SSH backend tests.

Each server runs ``/usr/sbin/sshd -D -f <own config>`` with its own host key, authorized_keys, pid file and
HOME for the sessions (``SetEnv HOME=...``), all under the session's temp dir: the machine's sshd config and
keys are never used. The client's key pair and known_hosts are the tests' own too. Since the "hosts" are this
machine, a leak check after every test finds any process whose working directory is under a server's HOME
(where every remote run directory lives) and fails the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distpar.testing.builders import wait_for_sshd

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0


@dataclass
class SSHServer:
    name: str
    port: int
    dir: Path
    home: Path  # HOME of the sessions: remote run directories are created under it
    host_key_line: str  # "ssh-ed25519 AAAA..."
    proc: subprocess.Popen[bytes]
    extra: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_line}\n"

    @property
    def runs_dir(self) -> Path:
        return self.home / ".cache" / "distpar" / "runs"

    def pid(self) -> int:
        return int((self.dir / "sshd.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop the server (by its PID) and every session it still has."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL if pid != self.proc.pid else signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def crash(self) -> None:
        """The host goes away: SIGKILL the server and its per-connection sshd processes (not what runs in the
        sessions: those see their channel close, as after a network failure)."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            if _comm(pid) == "sshd":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@dataclass
class SSHEnv:
    base: Path
    client_key: Path
    servers: list[SSHServer] = field(default_factory=list)

    def authorize(self, mark: str = "") -> None:
        """The client key may log in; its sessions carry the test's mark in their environment (so the
        process-leak check of tests/conftest.py sees what runs "on the hosts" too)."""
        option = f'environment="DISTPAR_TEST_MARK={mark}" ' if mark else ""
        pub = " ".join(self.client_key.with_suffix(".pub").read_text().split()[:2])
        (self.base / "authorized_keys").write_text(option + pub + "\n")

    @property
    def remote_root(self) -> Path:
        return self.base / "remote"

    def start(self, name: str, extra: str = "", env: str = "", sftp: bool = True) -> SSHServer:
        """A server; ``sftp=False``: one without an SFTP subsystem (some hardened hosts)."""
        d = self.base / "sshd" / name
        d.mkdir(parents=True)
        home = self.remote_root / name
        home.mkdir(parents=True)
        host_key = keygen(d / "host_ed25519")
        port = free_port()
        (d / "sshd_config").write_text(
            f"Port {port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {d / 'host_ed25519'}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "UseDNS no\n"
            "PermitUserEnvironment DISTPAR_TEST_MARK\n"
            "MaxStartups 100\n"
            + ("" if "MaxSessions" in extra else "MaxSessions 100\n")  # sshd takes a keyword's first value
            + ("Subsystem sftp internal-sftp\n" if sftp else "")
            + f"SetEnv HOME={home} {env}\n"  # sshd uses only the first SetEnv line
            + extra
        )
        proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                                cwd="/", stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_sshd(port, proc, d / "sshd.log", START_TIMEOUT)
        server = SSHServer(name, port, d, home, host_key, proc, extra)
        self.servers.append(server)
        return server


@pytest.fixture(scope="session")
def ssh_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHEnv]:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server (/usr/sbin/sshd) and ssh-keygen are needed")
    if not os.path.isdir("/run/sshd"):  # sshd's compiled-in privilege separation directory (Debian)
        try:
            os.makedirs("/run/sshd", mode=0o755)
        except OSError:
            pytest.skip("sshd needs /run/sshd and it cannot be created here")
    base = tmp_path_factory.mktemp("ssh")
    client_key = base / "client_ed25519"
    keygen(client_key)
    env = SSHEnv(base, client_key)
    env.authorize()
    yield env
    for s in env.servers:
        if s.proc.poll() is None:
            s.stop()


@pytest.fixture(scope="session")
def two_hosts(ssh_env: SSHEnv) -> tuple[SSHServer, SSHServer]:
    return ssh_env.start("h1"), ssh_env.start("h2")


@pytest.fixture
def start_sshd(ssh_env: SSHEnv) -> Iterator[Callable[..., SSHServer]]:
    """A server only for this test (stopped after it), e.g. one the test crashes."""
    mine: list[SSHServer] = []

    def start(name: str, extra: str = "", env: str = "", sftp: bool = True) -> SSHServer:
        s = ssh_env.start(f"{name}-{len(ssh_env.servers)}", extra, env, sftp)
        mine.append(s)
        return s

    yield start
    for s in mine:
        if s.proc.poll() is None:
            s.stop()


def trust(*servers: SSHServer) -> Path:
    """Add the servers' host keys to the test's ~/.ssh/known_hosts (HOME is per test)."""
    ssh = Path(os.environ["HOME"]) / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    kh = ssh / "known_hosts"
    with kh.open("a") as f:
        for s in servers:
            f.write(s.known_hosts_line)
    return kh


def inventory(path: Path, key: Path, servers: list[tuple[SSHServer, int]], **extra: str) -> Path:
    """A --hosts-file with (server, slots) entries."""
    lines = []
    for s, slots in servers:
        lines += ["[[host]]", f'address = "root@{s.address}"', f"slots = {slots}", f'key = "{key}"']
        lines += [f'{k} = "{v}"' for k, v in extra.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def remote_processes(root: Path) -> list[tuple[int, str]]:
    """Processes working inside ``root`` (where the sessions' run directories are)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(str(root) + "/"):
            found.append((int(entry.name), args.strip()))
    return found


@pytest.fixture(autouse=True)
def no_remote_leftovers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                        isolated_env: str) -> Iterator[None]:
    """After each test, nothing it started runs on the hosts: by the test's mark (see SSHEnv.authorize) and by
    working directory (under the sessions' HOMEs)."""
    if "ssh_env" in request.fixturenames:
        request.getfixturevalue("ssh_env").authorize(isolated_env)
    yield
    root = tmp_path_factory.getbasetemp()
    deadline = time.time() + 5
    while (left := [p for p in remote_processes(root) if "sshd" not in p[1]]) and time.time() < deadline:
        time.sleep(0.1)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left on the hosts: {left}"
