"""Loopback SSH hosts for the backends section: real OpenSSH servers on 127.0.0.1, each with its own config,
host key and HOME under the benchmark's scratch directory, and one client key of the benchmark's own (the
machine's sshd configuration and keys are never used or changed), started the way the SSH backend's tests
start them, and stopped afterwards."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distpar.testing.builders import wait_for_sshd

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def loopback_hosts(root: Path, count: int) -> Iterator[tuple[list[str], Path]]:
    """Start ``count`` sshd servers; yields their addresses (``user@127.0.0.1:port``) and the client key."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        raise RuntimeError(f"loopback SSH hosts need {SSHD} and ssh-keygen")
    if not os.path.isdir("/run/sshd"):  # sshd's compiled-in privilege separation directory (Debian)
        os.makedirs("/run/sshd", mode=0o755)
    root.mkdir(parents=True, exist_ok=True)
    key = root / "client_ed25519"
    (root / "authorized_keys").write_text(_keygen(key) + "\n")
    procs: list[subprocess.Popen[bytes]] = []
    hosts = []
    try:
        for i in range(1, count + 1):
            d = root / f"h{i}"
            (d / "home").mkdir(parents=True)
            _keygen(d / "host_ed25519")
            port = _free_port()
            (d / "sshd_config").write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_ed25519'}\nPidFile {d / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nStrictModes no\nUseDNS no\nMaxStartups 100\nMaxSessions 100\n"
                f"Subsystem sftp internal-sftp\nSetEnv HOME={d / 'home'}\n"
            )
            proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                                    cwd="/", stdin=subprocess.DEVNULL, start_new_session=True)
            procs.append(proc)
            wait_for_sshd(port, proc, d / "sshd.log", START_TIMEOUT)
            hosts.append(f"{getpass.getuser()}@127.0.0.1:{port}")
        yield hosts, key
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
