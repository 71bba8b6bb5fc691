"""The CLI as a user meets it: exit codes, exact error lines, and bad input changing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, independent_plan, make_repo, plan_text, sh_git, write_plan
from tests.conftest import run_distpar

pytestmark = pytest.mark.integration


def snapshot(repo: Path) -> tuple[str, str, str]:
    """Everything a bad invocation must leave untouched: refs, worktrees, status."""
    return (
        sh_git(repo, "for-each-ref"),
        sh_git(repo, "worktree", "list", "--porcelain"),
        sh_git(repo, "status", "--porcelain", "--untracked-files=all"),
    )


BAD_PLANS = {
    "no-block.md": ("# just prose\n", "no dispatch block"),
    "bad-json.md": ("```json dispatch\n{\"batches\": [\n```\n", "invalid JSON in the dispatch block"),
    "cycle.md": (plan_text([fake_batch(1, depends_on=[2]), fake_batch(2, depends_on=[1])]),
                 "dependency cycle: 1 -> 2 -> 1"),
    "unknown-dep.md": (plan_text([fake_batch(1, depends_on=[9])]), "unknown batch id '9'"),
    "dup.md": (plan_text([fake_batch(1), fake_batch(1)]), "duplicate batch id '1'"),
    "empty.md": (plan_text([]), "batches is empty: nothing to run"),
    "bad-agent.md": (plan_text([fake_batch(1, agent="nosuchagent")]), "unknown agent 'nosuchagent'"),
}


@pytest.mark.parametrize("name", sorted(BAD_PLANS))
def test_bad_plans_exit_2_and_change_nothing(repo: Path, name: str) -> None:
    text, message = BAD_PLANS[name]
    plan = repo.parent / name
    plan.write_text(text)
    (repo / "untracked.txt").write_text("mine")
    before = snapshot(repo)
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo)
    assert res.returncode == 2, res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith(f"Error: {plan}:") or first.startswith(f"Error: {plan}"), first
    assert message in first
    assert snapshot(repo) == before
    assert not (Path.home() / "distpar-home" / "runs").exists()


def test_missing_plan_file(repo: Path) -> None:
    res = run_distpar("run", "nope.md", cwd=repo)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == "Error: plan file not found: nope.md"


def test_not_a_repository(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "p.md", independent_plan(1))
    (tmp_path / "plain").mkdir()
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=tmp_path / "plain")
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == f"Error: not a git repository: {tmp_path / 'plain'}"


def test_dirty_tree_is_refused(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(1))
    (repo / "README.md").write_text("changed\n")
    before = snapshot(repo)
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == "Error: the working tree has uncommitted changes (README.md)"
    assert res.stderr.splitlines()[1].startswith("Hint: commit or stash them first, or pass --allow-dirty")
    assert snapshot(repo) == before


def test_allow_dirty_runs_from_the_last_commit(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"new.txt": "x"})])
    (repo / "README.md").write_text("local edit\n")
    res = run_distpar("run", str(plan), "--agent", "fake", "--allow-dirty", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert (repo / "new.txt").read_text() == "x" and (repo / "README.md").read_text() == "local edit\n"


def test_empty_repository_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    sh_git(empty, "init", "-q")
    plan = write_plan(tmp_path / "p.md", independent_plan(1))
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=empty)
    assert res.returncode == 2 and "has no commits yet" in res.stderr.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "Invalid value for '-w' / '--workers': 0 is not in the range x>=1."),
        (["--strategy", "random"], "Invalid value for '--strategy': 'random' is not one of"),
        (["--strategy", "round-robin", "--split", "1"], "Error: --split goes with --strategy midpoint"),
        (["--into", "nosuch"], "Error: --into nosuch: no such branch"),
        (["--agent-cmd", "tool {nope}"], "Error: agent command template has unknown placeholder(s) nope"),
        (["--agent", "gpt-9"], "Error: unknown agent 'gpt-9'"),
        (["--hosts", "a,b"], "Error: --hosts goes with --backend ssh"),
        (["--backend", "ssh"], "Error: --backend ssh needs --hosts H1,H2 or --hosts-file FILE"),
        (["--forward-env", "DISTPAR_SURELY_UNSET"],
         "Error: --forward-env DISTPAR_SURELY_UNSET: the variable is not set"),
        (["--bogus"], "Error: No such option '--bogus'."),
    ],
)
def test_bad_flags(repo: Path, args: list[str], message: str) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(2))
    before = snapshot(repo)
    res = run_distpar("run", str(plan), *args, cwd=repo)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert snapshot(repo) == before


def test_dry_run_prints_the_schedule_and_changes_nothing(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, estimate=2), fake_batch(2), fake_batch(3, depends_on=[1]),
                                             fake_batch(4)], independent=False)
    before = snapshot(repo)
    res = run_distpar("run", str(plan), "--workers", "2", "--dry-run", cwd=repo)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"plan test-plan ({plan}): 4 batches, 4 units, 2 worker(s)"
    assert lines[1].startswith("order: dag: depends_on declared (batch 3): a DAG in which batches that declare none "
                               "(1, 2, 4) start at once")
    assert lines[2:6] == ["  batch 1: 1 (2m)", "  batch 2: 2 (1m)", "  batch 3: 3 (1m) after 1", "  batch 4: 4 (1m)"]
    assert lines[6:9] == ["predicted timeline (minutes):", "  w1: 1 0-2 -> 3 2-3", "  w2: 2 0-1 -> 4 1-2"]
    assert lines[9].startswith("estimated makespan 3 min, serial 5 min, predicted speedup 1.67x; lower bound 3 min")
    assert "warning" not in res.stderr
    assert snapshot(repo) == before
    as_json = run_distpar("plan", str(plan), "--workers", "2", "--json", cwd=repo)
    data = json.loads(as_json.stdout)
    assert data["rule"] == "dag" and data["preview"]["prediction"]["makespan"] == 3
    assert data["schedule"]["makespan"] == 3 and data["schedule"]["lower_bound"] == 3
    assert [s["batches"] for s in data["schedule"]["lanes"]] == [["1", "3"], ["2", "4"]]


def test_plan_says_which_order_it_follows(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(3), independent=False)
    res = run_distpar("plan", str(plan), "--workers", "5", cwd=repo)
    assert res.returncode == 0
    assert "order: stages: no depends_on declared: batches run as ordered stages" in res.stdout
    assert "  w1: 1 0-1 -> 2 1-2 -> 3 2-3" in res.stdout and "  w5: (idle)" in res.stdout
    free = run_distpar("plan", str(plan), "--workers", "5", "--independent", cwd=repo)
    assert "order: independent: --independent: batches do not wait for each other" in free.stdout
    assert "predicted speedup 3.00x" in free.stdout


def test_run_prints_summary_and_status_lists_it(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(3))
    res = run_distpar("run", str(plan), "--workers", "3", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first.endswith(": ok (3 ok)") and first.startswith("run ")
    assert "speedup" in res.stdout and "cost $0.0300" in res.stdout and "merged into main" in res.stdout
    run_id = first.split()[1].rstrip(":")
    # Totals per worker and for the run, at the end of the run and in status.
    assert "  run: 3 unit(s)" in res.stdout and ", $0.0300, tokens 3000 in / 600 out" in res.stdout
    assert sum(line.startswith(("  w1:", "  w2:", "  w3:")) for line in res.stdout.splitlines()) == 3
    listing = run_distpar("status", cwd=repo)
    assert run_id in listing.stdout and "3/3 ok" in listing.stdout
    one = run_distpar("status", run_id, cwd=repo)
    assert one.returncode == 0 and one.stdout.count(" ok ") >= 3
    assert "totals:\n" in one.stdout and ", $0.0100, tokens 1000 in / 200 out" in one.stdout
    assert "  run: 3 unit(s)" in one.stdout
    missing = run_distpar("status", "nosuchrun", cwd=repo)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no run 'nosuchrun'")


def test_json_output(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(2))
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--json", cwd=repo)
    lines = [json.loads(line) for line in res.stdout.splitlines()]  # JSON lines: the events, then the summary
    kinds = [e["event"] for e in lines[:-1]]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended" and kinds.count("unit_ended") == 2
    data = lines[-1]
    assert data["state"] == "ok" and data["units"] == {"ok": 2} and data["cost_usd"] == pytest.approx(0.02)
    assert res.stderr == ""
    quiet = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--json", "-q", cwd=repo)
    assert len(quiet.stdout.splitlines()) == 1 and json.loads(quiet.stdout)["state"] == "ok"  # -q: the summary only
    assert quiet.stderr == ""


def test_failed_run_exit_1_shows_log_tail(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, extra=["@fake fail 4 'compilation failed'"])])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert res.returncode == 1
    assert "batch 1 (w1) failed: compilation failed" in res.stdout
    assert "log: " in res.stdout and "branches kept: distpar/" in res.stdout


def test_conflict_exit_3_prints_files_and_commands(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "p.md", [fake_batch(1, writes={"x.txt": "1"}), fake_batch(2, writes={"x.txt": "2"})])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo)
    assert res.returncode == 3
    out = res.stdout
    assert "merge conflict (integration)" in out and "  conflicting: x.txt" in out
    assert "main was left unchanged; nothing was resolved automatically. To continue:" in out
    assert "git merge --no-ff distpar/" in out
