"""``distpar plan``: refusals at plan time, and --suggest-deps against the fake agent (real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distpar.core.plan import load_plan
from distpar.testing.builders import fake_batch, make_repo, plan_text, sh_git, write_plan
from tests.conftest import run_distpar


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def five_batch_plan() -> list[dict[str, object]]:
    """The shape of the issue's real plan: a parser, two components, wiring them, committing."""
    return [fake_batch(1, description="backend parser"), fake_batch(2, description="component A"),
            fake_batch(3, description="component B"), fake_batch(4, description="wire A and B to the parser"),
            fake_batch(5, description="commit all changes")]


@pytest.mark.parametrize(("prompt", "message"), [
    ("do \u0000 it", "batches[0].agents[0].prompt contains a NUL byte"),
    ("@fake sleep 1", None),
])
def test_nul_in_a_prompt_is_refused_at_plan_time(repo: Path, prompt: str, message: str | None) -> None:
    plan = write_plan(repo.parent / "p.md", [{**fake_batch(1), "agents": [{"subagent_type": "x", "prompt": prompt}]}])
    for command in (["plan", str(plan)], ["run", str(plan), "--agent", "fake", "--dry-run"]):
        res = run_distpar(*command, cwd=repo)
        if message is None:
            assert res.returncode == 0, res.stderr
        else:
            assert res.returncode == 2 and f"{plan}:" in res.stderr and message in res.stderr, res.stderr
            assert "Traceback" not in res.stderr


def test_non_finite_estimates_are_refused(repo: Path) -> None:
    plan = repo.parent / "p.md"
    plan.write_text('```json dispatch\n{"batches": [{"id": 1, "estimate": 1e309,\n'
                    ' "agents": [{"prompt": "x"}]}]}\n```\n')
    res = run_distpar("plan", str(plan), cwd=repo)
    assert res.returncode == 2
    assert res.stderr.strip() == f"Error: {plan}:2: batches[0].estimate must be a finite number, got 1e309"


def test_suggest_deps_prints_the_plan_with_depends_on_and_the_speedups(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", five_batch_plan(), independent=False)
    original = plan.read_text()
    answer = {"batches": [
        {"id": "1", "depends_on": [], "reason": "nothing before it"},
        {"id": "2", "depends_on": [], "reason": "a self-contained component"},
        {"id": "3", "depends_on": ["9", "3"], "reason": "bad ids are dropped"},
        {"id": "4", "depends_on": ["1", "2", "3"], "reason": "wires all three"},
        {"id": "5", "depends_on": ["4"], "reason": "commits everything"},
    ]}
    env = {"FAKE_AGENT_STRUCTURED_OUTPUT": json.dumps(answer), "FAKE_AGENT_LOG": str(repo.parent / "calls.jsonl")}
    before = sh_git(repo, "status", "--porcelain")
    res = run_distpar("plan", str(plan), "--suggest-deps", "--agent", "fake", "-w", "3", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    assert plan.read_text() == original, "without --write the plan file is not touched"
    assert sh_git(repo, "status", "--porcelain") == before
    printed = repo.parent / "printed.md"
    printed.write_text(res.stdout)
    suggested = load_plan(printed)
    assert {b.id: b.depends_on for b in suggested.batches} == {"1": (), "2": (), "3": (), "4": ("1", "2", "3"),
                                                                "5": ("4",)}
    assert "predicted speedup with 3 worker(s): 1.00x as stages (5 min), 1.67x with these depends_on (3 min)" \
        in res.stderr
    assert "batch 3: ignored unknown batch '9'" in res.stderr
    assert "batch 3: ignored 3 (not an earlier batch)" in res.stderr
    call = json.loads((repo.parent / "calls.jsonl").read_text().splitlines()[-1])
    argv = call["argv"]
    assert "--json-schema" in argv and "--disallowedTools" in argv and "bypassPermissions" not in argv
    assert "> Batch 4: do the work." in argv[-1], "prompts are quoted to the agent as data"


def test_suggest_deps_write_changes_only_the_dependencies(repo: Path) -> None:
    plan = repo.parent / "p.md"
    plan.write_text(plan_text(five_batch_plan(), preamble="# My plan\n\nProse stays.\n").replace("\n", "\r\n"))
    answer = {"batches": [{"id": str(i), "depends_on": [str(i - 1)] if i == 5 else [], "reason": "r"}
                          for i in range(1, 6)]}
    env = {"FAKE_AGENT_STRUCTURED_OUTPUT": json.dumps(answer)}
    res = run_distpar("plan", str(plan), "--suggest-deps", "--write", "--agent", "fake", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and f"wrote depends_on into {plan}" in res.stderr
    text = plan.read_bytes().decode()
    assert text.startswith("# My plan\r\n\r\nProse stays.\r\n") and "\n" not in text.replace("\r\n", "")
    assert '"id": 5, "depends_on": [4],' in text and '"id": 1, "depends_on": [],' in text
    written = load_plan(plan)
    assert written.declares_dependencies and written.batches[4].depends_on == ("4",)
    again = run_distpar("plan", str(plan), "--suggest-deps", "--agent", "fake", cwd=repo, env=env)
    assert again.returncode == 2 and "already declares depends_on" in again.stderr


def test_suggest_deps_refuses_agents_without_structured_output_and_reports_failures(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", five_batch_plan())
    res = run_distpar("plan", str(plan), "--suggest-deps", "--agent", "codex", cwd=repo)
    assert res.returncode == 2 and "the codex agent has none; use --agent claude" in res.stderr
    res = run_distpar("plan", str(plan), "--suggest-deps", "--agent", "fake", cwd=repo,
                      env={"FAKE_AGENT_STRUCTURED_OUTPUT": json.dumps({"answer": 42})})
    assert res.returncode == 1 and "Error: the agent's answer has no list of batches" in res.stderr
    res = run_distpar("plan", str(plan), "--write", cwd=repo)
    assert res.returncode == 2 and "Error: --write goes with --suggest-deps" in res.stderr


def test_a_batch_without_agents_is_skipped_and_recorded(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "1"}), {**fake_batch(2), "agents": []},
                                             fake_batch(3, writes={"c.txt": "3"})], independent=False)
    dry = run_distpar("run", str(plan), "--agent", "fake", "--dry-run", cwd=repo)
    assert dry.returncode == 0 and "  batch 2: skipped (no agents)" in dry.stdout
    assert "warning: " in dry.stderr and "batch 2 has no agents: it is skipped" in dry.stderr
    res = run_distpar("run", str(plan), "--agent", "fake", "--json", "-q", cwd=repo)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.splitlines()[-1])
    assert summary["state"] == "ok" and summary["units"] == {"ok": 2, "skipped": 1}
    status = run_distpar("status", summary["run_id"], "--json", cwd=repo)
    rows = {b["unit_id"]: b for b in json.loads(status.stdout)["units"]}
    assert rows["2"]["state"] == "skipped" and rows["2"]["error"] == "the batch has no agents (agents: [])"
    # Stage 3 still came after stage 1 (the empty stage between them gates nothing).
    assert {"a.txt", "c.txt"} <= set(sh_git(repo, "ls-tree", "--name-only", "main").split())


def test_the_dry_run_says_how_each_subagent_type_reaches_the_agent(repo: Path) -> None:
    (repo / ".claude" / "agents").mkdir(parents=True)
    (repo / ".claude" / "agents" / "reviewer.md").write_text("---\nname: reviewer\n---\nReview the code.\n")
    plan = write_plan(repo.parent / "p.md", [
        {**fake_batch(1), "agents": [{"subagent_type": "reviewer", "prompt": "review"}]},
        {**fake_batch(2), "agents": [{"subagent_type": "frontend-dev", "prompt": "build"}]},
    ])
    res = run_distpar("plan", str(plan), cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "subagent_type reviewer: claude --agent reviewer (defined in .claude/agents/reviewer.md)" in res.stdout
    assert "subagent_type frontend-dev: stays in the prompt (no .claude/agents/frontend-dev.md" in res.stdout
    codex = run_distpar("run", str(plan), "--agent", "codex", "--dry-run", cwd=repo)
    assert "stays in the prompt (only claude selects an agent by name; this run uses codex)" in codex.stdout
