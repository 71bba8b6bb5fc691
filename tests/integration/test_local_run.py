"""The local run end to end: real git repositories, real subprocesses, the shipped fake agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.core.errors import ExitCode
from distpar.core.model import UnitStatus
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, independent_plan, make_repo, sh_git, tree_files, write_plan
from tests.conftest import processes_with_mark, run_distpar
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


def branches(repo: Path) -> list[str]:
    return sh_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split()


def worktree_count(repo: Path) -> int:
    return len(gitops.worktrees(repo))


def mixed_plan() -> list[dict[str, object]]:
    """Independent batches, a chain and a diamond, with cross-worker dependencies."""
    return [
        fake_batch("a", writes={"a.txt": "a\n"}, sleep=0.2),
        fake_batch("b", writes={"b.txt": "b\n"}, sleep=0.4),
        fake_batch("c", writes={"c.txt": "c\n"}),
        fake_batch("d", extra=["@fake append a.txt 'from d'", "@fake append b.txt 'from d'"],
                   depends_on=["a", "b"]),
        fake_batch("e", extra=["@fake append c.txt 'from e'"], depends_on=["c"]),
        fake_batch("f", extra=["@fake append a.txt 'from f'"], depends_on=["d"]),
    ]


def test_parallel_run_merges_everything_and_equals_serial(tmp_path: Path) -> None:
    serial_repo = make_repo(tmp_path / "serial" / "repo")
    parallel_repo = make_repo(tmp_path / "parallel" / "repo")
    serial, _ = run_plan(serial_repo, mixed_plan(), workers=1)
    report, runner = run_plan(parallel_repo, mixed_plan(), workers=3)
    assert serial.exit_code == report.exit_code == ExitCode.OK
    assert [r.status for r in report.results] == [UnitStatus.OK] * 6
    assert len(runner.schedule.lanes) > 1 and runner.schedule.waits  # really parallel, really cross-worker
    assert tree_files(parallel_repo) == tree_files(serial_repo)
    assert (parallel_repo / "a.txt").read_text() == "a\nfrom d\nfrom f\n"
    # Clean end state: no unit branches, no extra worktrees, the user's checkout on main and clean.
    assert branches(parallel_repo) == ["main"]
    assert worktree_count(parallel_repo) == 1
    assert gitops.current_branch(parallel_repo) == "main" and not gitops.dirty_files(parallel_repo)
    # Every batch's commit names it, and the unit merges are real --no-ff merges.
    log = sh_git(parallel_repo, "log", "--format=%s", "main")
    for bid in "abcdef":
        assert f"distpar: batch {bid}: batch {bid}" in log
    assert "distpar: merge distpar/" in log


def test_journal_records_the_run(repo: Path) -> None:
    report, _ = run_plan(repo, independent_plan(3), workers=2)
    j = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    run = j.run(report.run_id)
    assert run is not None and run["state"] == "ok" and run["exit_code"] == 0
    rows = j.units(report.run_id)
    assert [r["state"] for r in rows] == ["ok"] * 3
    assert all(r["cost_usd"] == pytest.approx(0.01) and r["input_tokens"] == 1000 for r in rows)
    assert all(r["started"] and r["ended"] >= r["started"] and r["log_path"] for r in rows)
    # (the workspaces' removal goes on after the run's end, off its critical path, and is journaled when done)
    kinds = [e.kind for e in j.events(report.run_id) if not e.kind.startswith("workspaces_remov")]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended"
    assert kinds.count("unit_ended") == 3 and "merge_started" in kinds and "merged" in kinds
    assert report.cost_usd == pytest.approx(0.03)
    for r in rows:
        assert Path(r["log_path"]).exists()


def test_batch_that_changes_nothing_is_recorded(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(1, extra=["@fake sleep 0"]), fake_batch(2, writes={"x": "1"})],
                         workers=2)
    assert report.exit_code == ExitCode.OK
    assert [r.changed for r in report.results] == [False, True]


def test_failing_batch_stops_its_stream_and_dependants_only(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    batches = [
        fake_batch(1, writes={"one.txt": "1"}),
        fake_batch(2, writes={"two.txt": "2"}, extra=["@fake fail 3 'tests do not pass'"]),
        fake_batch(3, writes={"three.txt": "3"}, depends_on=[2]),
        fake_batch(4, writes={"four.txt": "4"}),
    ]
    report, runner = run_plan(repo, batches, workers=2)
    status = {r.unit_id: r.status for r in report.results}
    assert status == {"1": UnitStatus.OK, "2": UnitStatus.FAILED, "3": UnitStatus.SKIPPED,
                      "4": UnitStatus.OK}
    assert report.exit_code == ExitCode.BATCH_FAILED
    failed = next(r for r in report.results if r.unit_id == "2")
    assert failed.exit_code == 3 and "tests do not pass" in failed.error
    # Nothing landed; every unit's branch is kept with its committed work; the failed batch's edits are saved.
    assert gitops.rev(repo, "main") == start
    kept = branches(repo)
    assert {runner.branch("1"), runner.branch("4")} <= set(kept) and runner.branch("3") not in kept
    assert "four.txt" in tree_files(repo, runner.branch("4")) and "one.txt" in tree_files(repo, runner.branch("1"))
    saved = [r for r in report.saved_refs if r.endswith("/saved/2")]
    assert saved and "two.txt" in tree_files(repo, saved[0])
    assert worktree_count(repo) == 1


def test_conflict_is_never_resolved(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    batches = [fake_batch(1, writes={"same.txt": "one\n"}), fake_batch(2, writes={"same.txt": "two\n"})]
    report, runner = run_plan(repo, batches, workers=2)
    assert report.exit_code == ExitCode.CONFLICT and report.state == "conflict"
    assert report.conflict is not None and report.conflict.files == ("same.txt",)
    assert gitops.rev(repo, "main") == start and not (repo / "same.txt").exists()
    assert not gitops.dirty_files(repo)
    assert set(report.branches) == {runner.branch("1"), runner.branch("2"), runner.integration}
    # The integration branch holds the first unit (plan order); the second unit's branch is intact.
    assert sh_git(repo, "show", f"{runner.integration}:same.txt") == "one"
    assert sh_git(repo, "show", f"{runner.branch('2')}:same.txt") == "two"
    # The conflict was found as soon as both had finished, before the final merge.
    assert [p["files"] for p in report.predicted_conflicts] == [["same.txt"]]
    assert any("git merge --no-ff" in c for c in report.conflict.commands)


def test_dependency_merge_conflict_blocks_the_batch(repo: Path) -> None:
    batches = [
        fake_batch("x", writes={"f.txt": "x\n"}, sleep=0.3),
        fake_batch("y", writes={"f.txt": "y\n"}),
        fake_batch("z", writes={"z.txt": "z\n"}, depends_on=["x", "y"]),
    ]
    report, _ = run_plan(repo, batches, workers=2)
    status = {r.unit_id: r.status for r in report.results}
    assert status["z"] is UnitStatus.BLOCKED and report.exit_code == ExitCode.CONFLICT
    assert report.conflict is not None and report.conflict.stage == "dependency"
    assert report.conflict.files == ("f.txt",) and report.conflict.unit_id == "z"


def test_timeout_kills_the_whole_process_group(repo: Path, isolated_env: str) -> None:
    batches = [fake_batch(1, extra=["@fake spawn-child", "@fake write partial.txt 'half done'", "@fake hang"],
                          timeout=1.5)]
    t0 = time.time()
    report, _ = run_plan(repo, batches)
    assert time.time() - t0 < 15
    r = report.results[0]
    assert r.status is UnitStatus.TIMEOUT and r.outcome and r.outcome.result_class == "timeout"
    assert report.exit_code == ExitCode.BATCH_FAILED
    assert processes_with_mark(isolated_env) == []  # the agent and its child are gone
    assert report.saved_refs and "partial.txt" in tree_files(repo, report.saved_refs[0])


def test_prompt_with_shell_metacharacters_is_not_interpreted(repo: Path) -> None:
    evil = "$(touch pwned) `touch pwned2`; rm -rf / && echo \"quoted\" 'single' | cat > pwned3 ${HOME} *"
    batches = [fake_batch(1, writes={"prompt.txt": evil}, description="meta; $(x)")]
    report, _ = run_plan(repo, batches)
    assert report.exit_code == ExitCode.OK
    assert (repo / "prompt.txt").read_text() == evil
    for name in ("pwned", "pwned2", "pwned3"):
        assert not (repo / name).exists() and not (repo.parent / name).exists()


def test_agent_template_gets_placeholders_as_single_arguments(repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(
        "import json, os, sys\n"
        "open('args.json', 'w').write(json.dumps({'argv': sys.argv[1:], 'id': os.environ['DISTPAR_BATCH_ID'],"
        " 'guard': os.environ.get('DISTPAR_SUBPROCESS')}))\n"
    )
    from distpar.core.model import AgentConfig

    tmpl = f"{sys.executable} {script} --prompt {{prompt}} --file {{prompt_file}} --id {{batch_id}}"
    report, _ = run_plan(repo, [fake_batch(7, description="t")], agent=AgentConfig("template", template=tmpl))
    assert report.exit_code == ExitCode.OK
    got = json.loads((repo / "args.json").read_text())
    assert got["argv"][0:2] == ["--prompt", "Batch 7: do the work."] and got["argv"][4:] == ["--id", "7"]
    assert Path(got["argv"][3]).read_text() == "Batch 7: do the work."
    assert got["id"] == "7" and got["guard"] == "1"


def test_two_runs_at_once_on_one_repo(repo: Path) -> None:
    p1 = write_plan(repo.parent / "one.md", [fake_batch(f"a{i}", writes={f"a{i}.txt": "a"}, sleep=1) for i in range(2)])
    p2 = write_plan(repo.parent / "two.md", [fake_batch(f"b{i}", writes={f"b{i}.txt": "b"}, sleep=1) for i in range(2)])
    procs = [
        subprocess.Popen([sys.executable, "-m", "distpar", "run", str(p), "--workers", "2", "--agent", "fake",
                          "--keep-branches", "--into", "main"], cwd=repo, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for p in (p1, p2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    # Both ran in parallel in their own worktrees and branches; both landed (the second merges onto the first).
    assert codes == [0, 0], outs
    files = tree_files(repo)
    assert {"a0.txt", "a1.txt", "b0.txt", "b1.txt"} <= set(files)
    run_branches = {b.split("/")[1] for b in branches(repo) if b.startswith("distpar/")}
    assert len(run_branches) == 2


def test_sigint_stops_everything_and_keeps_work(repo: Path, isolated_env: str) -> None:
    plan = write_plan(repo.parent / "slow.md", [
        fake_batch(1, writes={"one.txt": "1"}),
        fake_batch(2, extra=["@fake write two.txt 'half'", "@fake spawn-child", "@fake sleep 60"]),
        fake_batch(3, extra=["@fake write three.txt 'half'", "@fake sleep 60"]),
    ])
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--workers", "2", "--agent", "fake",
                             "--strategy", "round-robin"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    home = Path(os.environ["DISTPAR_HOME"])
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until both slow agents have written their half-done files
        if len(list(home.glob("worktrees/*/*/w*/two.txt"))) + len(list(home.glob("worktrees/*/*/w*/three.txt"))) == 2:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the agents never started")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out
    assert processes_with_mark(isolated_env) == []
    assert worktree_count(repo) == 1 and not list(home.glob("worktrees/*/*/w*"))
    # Batch 1 was committed on its branch; the unfinished work of 2 and 3 is saved on side refs.
    saved = sh_git(repo, "for-each-ref", "--format=%(refname)", "refs/distpar/").split()
    assert any(r.endswith("/saved/2") for r in saved) and any(r.endswith("/saved/3") for r in saved)
    b1 = [b for b in branches(repo) if b.endswith("/b/1")]
    assert b1 and "one.txt" in tree_files(repo, b1[0])
    j = Journal(home / "journal.db")
    run = j.runs()[0]
    assert run["state"] == "interrupted" and run["exit_code"] == 130
    assert "interrupted" in [e.kind for e in j.events(run["id"])]
    assert gitops.rev(repo, "main") == sh_git(repo, "rev-list", "--max-parents=0", "main")


def test_nested_run_is_refused(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(1))
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo, env={"DISTPAR_SUBPROCESS": "1"})
    assert res.returncode == 2
    assert res.stderr.splitlines()[0].startswith("Error: distpar is running inside an agent that distpar started")


def test_agent_that_commits_itself_is_recorded_and_marked(repo: Path) -> None:
    from distpar.coordinator.recovery import committed_unit

    batches = [fake_batch(1, writes={"own.txt": "mine\n"}, extra=["@fake commit 'agent did it'"])]
    report, runner = run_plan(repo, batches, keep_branches=True)
    assert report.exit_code == ExitCode.OK and report.results[0].changed
    log = sh_git(repo, "log", "--format=%s", "main")
    assert "agent did it" in log and "distpar: batch 1: batch 1 (committed by the agent)" in log
    # The marker commit carries the trailers resume uses to know the batch is done.
    tip = gitops.rev(repo, runner.branch("1"))
    assert committed_unit(repo, runner.branch("1"), report.run_id, "1") == tip


def test_git_failure_under_the_coordinator_ends_the_run_cleanly(repo: Path) -> None:
    """A transport that hands back a bundle git cannot read: the run stops with exit 4, journaled, nothing lost."""
    from concurrent.futures import Future
    from dataclasses import replace

    from distpar.backends.local import LocalBackend
    from distpar.core.model import AgentConfig

    class BrokenReturn(LocalBackend):
        def submit(self, settings, spec):  # type: ignore[no-untyped-def]
            inner = super().submit(settings, spec)
            out: Future = Future()
            inner.add_done_callback(lambda f: out.set_result(replace(f.result(), bundle="/nonexistent.bundle")))
            return out

    plan_path = write_plan(repo.parent / "p.md", independent_plan(2, sleep=0.2))
    prepared = prepare_run(plan_path, RunOptions(agent=AgentConfig(preset="fake")), repo=repo, workers=2,
                           backend=BrokenReturn())
    runner, journal, start = prepared.runner, prepared.journal, prepared.runner.start
    report = runner.run()
    assert report.exit_code == ExitCode.BACKEND and report.state == "error"
    assert any("fetch" in e for e in report.errors), report.errors
    assert journal.run(report.run_id)["state"] == "error"
    assert gitops.rev(repo, "main") == start and worktree_count(repo) == 1
    # The units' committed work never came back: cleanup fetched it from the workspaces onto saved refs (the
    # unit whose reply failed first committed; the other may have been stopped before its agent wrote anything).
    saved = gitops.refs(repo, f"refs/distpar/{report.run_id}/saved/")
    names = {k: runner.branch(k).replace("/", "-") for k in ("1", "2")}
    back = [k for k, name in names.items() if any(ref.endswith(f"-cleanup-{name}") for ref in saved)]
    assert back, saved
    journal.close()
