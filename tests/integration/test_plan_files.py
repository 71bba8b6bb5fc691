"""Plan files as users hand them over (issue 21, items 10 and 12): duplicate keys, files that are not regular
files or are too large, and a plan whose batches all have no agents. Real CLI in a subprocess, real git."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, make_repo, sh_git, write_plan
from tests.conftest import run_distpar


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_a_second_batches_key_is_refused_not_last_wins(repo: Path) -> None:
    plan = repo.parent / "p.md"
    plan.write_text('# plan\n```json dispatch\n'
                    '{"batches": [{"id": 1, "agents": [{"prompt": "@fake write a.txt 1"}]}],\n'
                    ' "batches": [{"id": 2, "agents": [{"prompt": "@fake write b.txt 2"}]}]}\n```\n')
    before = sh_git(repo, "for-each-ref")
    for command in (["plan", str(plan)], ["run", str(plan), "--agent", "fake"]):
        res = run_distpar(*command, cwd=repo)
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr.splitlines()[0] == f'Error: {plan}:4: duplicate key "batches" at $', res.stderr
    assert sh_git(repo, "for-each-ref") == before


@pytest.mark.timeout(30)
def test_a_fifo_is_refused_at_once_naming_it(repo: Path) -> None:
    fifo = repo.parent / "plan.md"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    res = run_distpar("plan", str(fifo), cwd=repo, timeout=20)  # reading a FIFO with no writer would hang
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == f"Error: the plan {fifo} is not a regular file (a FIFO): give a file"
    assert time.monotonic() - t0 < 15


@pytest.mark.timeout(30)
def test_a_link_to_dev_zero_is_refused_without_reading_it(repo: Path) -> None:
    link = repo.parent / "plan.md"
    link.symlink_to("/dev/zero")
    res = run_distpar("run", str(link), "--agent", "fake", cwd=repo, timeout=20)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == (f"Error: the plan {link} is not a regular file (a character device): "
                                          "give a file")


def test_a_plan_over_the_size_cap_is_refused(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1)])
    with plan.open("a") as f:
        f.write("x" * 4 * 2**20)  # distpar.core.plan.MAX_PLAN_BYTES
    res = run_distpar("plan", str(plan), cwd=repo)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0].startswith(f"Error: the plan {plan} is 4.0 MiB: larger than the 4 MiB")


def test_batches_all_without_agents_are_a_valid_plan_with_nothing_to_run(repo: Path, tmp_path: Path) -> None:
    # The shape of CAST's own executor fixtures.
    plan = write_plan(repo.parent / "p.md", [{"id": 1, "description": "later", "agents": []},
                                             {"id": 2, "agents": [], "verify_files": []}], independent=False)
    refs, head = sh_git(repo, "for-each-ref"), sh_git(repo, "rev-parse", "HEAD")
    home = Path(os.environ["DISTPAR_HOME"])
    shown = run_distpar("plan", str(plan), cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert "nothing to run: no batch has an agent (agents: [] everywhere)" in shown.stdout.splitlines()
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "nothing to run: no batch has an agent (agents: [] everywhere); nothing was changed"
    as_json = run_distpar("run", str(plan), "--agent", "fake", "--json", cwd=repo)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["nothing_to_run"] is True
    assert (sh_git(repo, "for-each-ref"), sh_git(repo, "rev-parse", "HEAD")) == (refs, head)
    assert not sh_git(repo, "status", "--porcelain")
    assert not list(home.glob("**/runs/*")), "no run was recorded"
    status = run_distpar("status", cwd=repo)
    assert status.stdout.strip() == "no runs yet", status.stdout
