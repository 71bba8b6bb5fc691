"""``distpar init``: a commented plan skeleton that ``distpar plan`` accepts as it is, never over a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distpar.core.plan import parse_plan
from tests.conftest import run_distpar

pytestmark = pytest.mark.integration


def test_init_then_plan(repo: Path) -> None:
    out = run_distpar("init", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "wrote plan.md; see what it would do: distpar plan plan.md\n"
    dry = run_distpar("plan", "plan.md", "--json", cwd=repo)
    assert dry.returncode == 0 and dry.stderr == "", dry.stderr  # accepted as it is, not even a warning
    shown = json.loads(dry.stdout)
    assert shown["rule"] == "dag" and shown["warnings"] == []
    plan = parse_plan((repo / "plan.md").read_text(), "plan.md")
    parallel = [b for b in plan.batches if b.concurrent]
    assert parallel and len(parallel[0].agents) >= 2  # a parallel batch
    assert any(b.depends_on for b in plan.batches)  # what waits for what
    assert all(a.owns_files for b in plan.batches for a in b.agents)
    assert any(b.verify_files for b in plan.batches)  # a verify step
    last = plan.batches[-1]
    assert "verify" in last.description and set(last.depends_on) == {b.id for b in plan.batches[:-1]}
    assert "<!--" in (repo / "plan.md").read_text()  # commented


def test_init_never_overwrites(repo: Path) -> None:
    (repo / "plan.md").write_text("mine\n")
    out = run_distpar("init", cwd=repo)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == "Error: plan.md already exists; distpar init never overwrites a file"
    assert (repo / "plan.md").read_text() == "mine\n"


def test_init_into_a_directory_and_a_named_file(repo: Path) -> None:
    (repo / "plans").mkdir()
    assert run_distpar("init", "plans", cwd=repo).returncode == 0
    assert (repo / "plans" / "plan.md").is_file()
    assert run_distpar("init", "plans/auth-rework.md", cwd=repo).returncode == 0
    dry = run_distpar("plan", "plans/auth-rework.md", "--json", cwd=repo)
    assert dry.returncode == 0 and json.loads(dry.stdout)["plan_id"] == "auth-rework"
    missing = run_distpar("init", "no/such/dir/p.md", cwd=repo)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
