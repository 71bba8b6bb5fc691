"""What a remote agent prints travels as ``agent_output`` events over the worker's channel while it runs: ``logs
--follow`` shows it before the unit ends, a flood of output stays bounded, and the landed log holds every line
once. Real OpenSSH servers on loopback, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distpar.infra.capture import LINES_PER_SECOND
from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_distpar, wait_for
from tests.operate.conftest import batch_state, run_ids
from tests.ssh.conftest import SSHEnv, SSHServer, inventory, trust

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(180)]


def test_logs_follow_shows_a_remote_units_output_while_it_runs(two_hosts: tuple[SSHServer, SSHServer],
                                                              ssh_env: SSHEnv, repo: Path, tmp_path: Path,
                                                              isolated_env: str) -> None:
    h1, _ = two_hosts
    trust(h1)
    n = 100_000
    plan = write_plan(tmp_path / "plan.md", [
        fake_batch("talk", writes={"t.txt": "1\n"}, extra=[
            "@fake say 'early line'", "@fake sleep 4", "@fake say 'late line'", f"Test {isolated_env}."]),
        fake_batch("loud", writes={"l.txt": "1\n"}, extra=[f"@fake sh 'seq 1 {n}'", "@fake sleep 1"]),
    ])
    hosts = inventory(tmp_path / "hosts.toml", ssh_env.client_key, [(h1, 2)])
    t0 = time.time()
    run = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--backend", "ssh", "--hosts-file",
                            str(hosts), "--workers", "2", "--agent", "fake", "--json"], cwd=repo, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    follow: subprocess.Popen[str] | None = None
    try:
        run_id = wait_for(lambda: next(iter(run_ids()), ""), what="the run to start")
        wait_for(lambda: batch_state(run_id, "talk") == "running", what="the unit to start")
        follow = subprocess.Popen([sys.executable, "-m", "distpar", "logs", run_id, "--batch", "talk", "--follow"],
                                  cwd=repo, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
        shown: list[str] = []
        reader = threading.Thread(target=lambda: shown.extend(follow.stdout or ()), daemon=True)
        reader.start()
        wait_for(lambda: "early line\n" in shown, timeout=30, what="the unit's first line in logs --follow")
        assert batch_state(run_id, "talk") == "running"  # seen before the unit ended ...
        assert "late line\n" not in shown
        assert shown[0].startswith(f"--- distpar: attempt 1 on {h1.address}, as it runs")  # ... from the live copy
        stdout, stderr = run.communicate(timeout=120)
        took = time.time() - t0
        assert run.returncode == 0, stdout + stderr
        assert follow.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        for p in (run, follow):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr) if p is not None else ():
                if f:
                    f.close()
    # follow went on to the end of the live copy and says where the whole log is.
    assert "late line\n" in shown and shown[-1] == f"--- distpar: the unit ended; its whole log: distpar logs " \
                                                  f"{run_id} --batch talk\n"
    events = [json.loads(line) for line in stdout.splitlines()[:-1]]
    out = [e for e in events if e["event"] == "agent_output"]
    talk = [e["line"] for e in out if e["unit"] == "talk" and not e["line"].startswith("{")]
    assert talk == ["early line", "late line"]
    assert all(e["node"] == h1.address for e in out)
    # The flood on the other slot: bounded over the channel, counted in a marker, every line in the log.
    loud = [e for e in out if e["unit"] == "loud"]
    assert len(loud) <= (took + 1) * (LINES_PER_SECOND + 2)
    assert sum(e.get("skipped", 0) for e in loud) + sum("skipped" not in e for e in loud) >= n
    # Afterwards: the landed log holds each line once, and the live copies are gone.
    logs = Path(os.environ["DISTPAR_HOME"]) / "runs" / run_id / "logs"
    assert not list(logs.glob("*.live"))
    full = run_distpar("logs", run_id, "--batch", "talk", cwd=repo)
    assert full.returncode == 0, full.stderr
    assert full.stdout.startswith("--- distpar: unit talk, attempt 1")
    assert full.stdout.count("early line\n") == 1 and full.stdout.count("late line\n") == 1
    assert "as it runs" not in full.stdout
    nums = [line for line in (logs / "loud.log").read_text().splitlines() if line.isdigit()]
    assert nums == [str(i) for i in range(1, n + 1)]
