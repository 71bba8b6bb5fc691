"""--reuse-workspaces over SSH, against real OpenSSH servers on loopback: a host keeps the repository's workspaces
under its work directory, the next run takes them (setup kept), a damaged one is made anew and said."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.infra import paths
from distpar.testing.builders import fake_batch, sh_git
from tests.integration.conftest import run_plan
from tests.ssh.conftest import SSHEnv, SSHServer, inventory, trust

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(300)]


def ready(run_id: str) -> list[dict[str, Any]]:
    journal = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    events = [e for e in journal.events(run_id) if e.kind == "workspace_ready"]
    return [dict(e.data, worker=e.worker) for e in sorted(events, key=lambda e: e.worker or 0)]


def test_an_ssh_host_keeps_its_workspaces_for_the_next_run(two_hosts: tuple[SSHServer, SSHServer], ssh_env: SSHEnv,
                                                           repo: Path, tmp_path: Path) -> None:
    h1, _ = two_hosts
    trust(h1)
    workdir = h1.home / "work"
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 2)], workdir=str(workdir))
    (repo / ".gitignore").write_text("deps/\n")
    (repo / "package.json").write_text("{}\n")
    sh_git(repo, "add", "--all")
    sh_git(repo, "commit", "-q", "-m", "deps")
    setup_log = tmp_path / "setup-runs.log"
    setup = f"mkdir -p deps && echo ran > deps/installed && echo $PWD >> {setup_log}"

    def run(ids: list[int]) -> str:
        batches = [fake_batch(i, writes={f"out{i}.txt": str(i)}, extra=[f"@fake copy deps/installed seen{i}.txt"])
                   for i in ids]
        report, _ = run_plan(repo, batches, workers=2, backend="ssh", setup=setup, setup_key=("package.json",),
                             reuse_workspaces=True,
                             backend_options={"hosts": [], "hosts_file": hosts, "identity": None,
                                              "accept_unknown_hosts": False})
        assert report.exit_code == ExitCode.OK, (report.errors, [r.error for r in report.results])
        return report.run_id

    first = ready(run([1, 2]))
    where = workdir / "pool" / paths.repo_key(repo)
    assert [e["how"] for e in first] == ["new", "new"] and {Path(e["path"]).parent for e in first} == {where}
    assert len(setup_log.read_text().splitlines()) == 2
    second = ready(run([3, 4]))
    assert [(e["how"], e["setup"]) for e in second] == [("reused", "kept"), ("reused", "kept")]
    assert {e["path"] for e in second} == {e["path"] for e in first}
    assert len(setup_log.read_text().splitlines()) == 2
    assert (repo / "seen3.txt").read_text() == "ran\n" and (repo / "out4.txt").read_text() == "4"
    # The run directories went; the pool stays.
    assert sorted(p.name for p in workdir.iterdir()) == ["pool"]

    damaged = Path(first[0]["path"])
    (damaged / ".git" / "index").write_bytes(b"not an index")
    third = ready(run([5, 6]))
    rebuilt = [e for e in third if e["how"] == "rebuilt"]
    assert len(rebuilt) == 1 and rebuilt[0]["path"] == str(damaged) and "is damaged" in rebuilt[0]["reason"]
    assert rebuilt[0]["setup"] == "ran" and (repo / "out6.txt").read_text() == "6"
