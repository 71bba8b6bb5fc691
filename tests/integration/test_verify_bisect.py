"""A failing --verify-merged names the unit whose merge first breaks it: the plan-order merge sequence bisected
(O(log n) runs of the check) or, with --verify-each-merge, checked after every merge. A semantic break: one unit
renames a function others' work still calls; each passes alone, the merge fails."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration

# Every name a uses*.txt calls must be defined in api.txt.
CHECK = ('for f in uses*.txt; do [ -e "$f" ] || continue; n=$(cat "$f"); '
         'grep -qx "$n" api.txt || { echo "$f calls $n: not defined"; exit 1; }; done; echo "all calls defined"')


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def plan(n: int, breaker: int) -> list[dict[str, object]]:
    """``n`` units; unit ``breaker`` renames the API's function, every other one adds a call to it."""
    return [fake_batch(f"u{i:02d}", writes={"api.txt": "new_name\n"}) if i == breaker
            else fake_batch(f"u{i:02d}", writes={f"uses{i:02d}.txt": "old_name\n"}) for i in range(n)]


def setup_repo(repo: Path) -> None:
    (repo / "api.txt").write_text("old_name\n")
    sh_git(repo, "add", "api.txt")
    sh_git(repo, "commit", "-q", "-m", "the api")


def test_four_units_the_cli_names_the_unit_whose_merge_breaks_the_check(repo: Path) -> None:
    setup_repo(repo)
    start = gitops.rev(repo, "main")
    p = write_plan(repo.parent / "p.md", plan(4, breaker=2))
    res = run_distpar("run", str(p), "--agent", "fake", "--workers", "4", "--verify-merged", CHECK, cwd=repo)
    assert res.returncode == ExitCode.GATE_FAILED, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert "the check first fails after the merge of unit u02" in res.stdout, res.stdout
    assert "uses00.txt calls old_name: not defined" in res.stdout
    assert gitops.rev(repo, "main") == start
    found = [e for e in journal().events(rid) if e.kind == "verify_bisected"]
    assert len(found) == 1 and found[0].unit_id == "u02"
    data = found[0].data
    assert data["each"] is False and data["runs"] <= math.ceil(math.log2(4)) + 1
    # The check really ran on intermediate merges: the commit named is the merge of u02 into the integration.
    assert sh_git(repo, "log", "-1", "--format=%s", data["commit"]) == f"distpar: merge distpar/{rid}/b/u02"
    assert "not defined" in data["tail"]
    assert "the check first fails after the merge of unit u02" in run_distpar("status", rid, cwd=repo).stdout


def test_sixteen_units_bisection_takes_log_n_checks(repo: Path) -> None:
    setup_repo(repo)
    report, _ = run_plan(repo, plan(16, breaker=11), workers=4, verify_merged=CHECK)
    assert report.exit_code == ExitCode.GATE_FAILED
    b = report.bisected
    assert b is not None and b["unit"] == "u11" and not b["each"]
    assert b["runs"] <= math.ceil(math.log2(16)) + 1
    assert "uses00.txt calls old_name: not defined" in b["tail"]
    # Every merge before u11's passed, u11's and every later one fails: what the runs saw agrees.
    order = [f"distpar/{report.run_id}/b/u{i:02d}" for i in range(16)]
    for t in b["tried"]:
        assert t["ok"] == (order.index(t["label"]) < 11), b["tried"]


def test_verify_each_merge_checks_after_every_merge_up_to_the_first_failure(repo: Path) -> None:
    setup_repo(repo)
    report, _ = run_plan(repo, plan(4, breaker=1), workers=2, verify_merged=CHECK, verify_each_merge=True)
    assert report.exit_code == ExitCode.GATE_FAILED
    b = report.bisected
    assert b is not None and b["unit"] == "u01" and b["each"] and b["runs"] == 2
    assert [t["ok"] for t in b["tried"]] == [True, False]


def test_verify_each_merge_passes_and_lands_when_every_merge_passes(repo: Path) -> None:
    setup_repo(repo)
    report, _ = run_plan(repo, plan(3, breaker=99), workers=2, verify_merged=CHECK, verify_each_merge=True)
    assert report.exit_code == ExitCode.OK, report.summary()
    checks = [e for e in journal().events(report.run_id) if e.kind == "verify_merged"]
    assert len(checks) == 1 and checks[0].data["ok"]
    assert {"uses00.txt", "uses01.txt", "uses02.txt"} <= set(sh_git(repo, "ls-tree", "--name-only", "main").split())


def test_verify_each_merge_without_a_check_is_refused_and_changes_nothing(repo: Path) -> None:
    p = write_plan(repo.parent / "p.md", plan(2, breaker=99))
    start = gitops.rev(repo, "main")
    res = run_distpar("run", str(p), "--agent", "fake", "--verify-each-merge", cwd=repo)
    assert res.returncode == ExitCode.USAGE
    assert "--verify-each-merge needs --verify-merged" in res.stderr
    assert gitops.rev(repo, "main") == start and not journal().runs()


def test_an_interrupt_stops_the_bisection_and_resume_searches_again(repo: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import wait_for

    setup_repo(repo)
    hang, searching = repo.parent / "hang", repo.parent / "searching"
    hang.write_text("")
    # On the intermediate merges (u01 merged, u03 not yet) the check hangs while ``hang`` exists.
    check = (f'if [ -e uses01.txt ] && [ ! -e uses03.txt ] && [ -e {hang} ]; then touch {searching}; sleep 60; fi; '
             + CHECK)
    p = write_plan(repo.parent / "p.md", plan(4, breaker=2))
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(p), "--agent", "fake", "--workers", "4",
                             "--verify-merged", check], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        wait_for(searching.exists, timeout=90, what="the bisection to reach an intermediate merge")
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert time.monotonic() - t < 30  # the hanging check was stopped, not waited for
    assert proc.returncode == ExitCode.GATE_FAILED, out
    rid = run_id_of(out)
    assert [e.kind for e in journal().events(rid) if e.kind.startswith("verify_bisect")] == ["verify_bisect_stopped"]
    hang.unlink()
    again = run_distpar("resume", rid, cwd=repo)
    assert again.returncode == ExitCode.GATE_FAILED, again.stdout + again.stderr
    assert "the check first fails after the merge of unit u02" in again.stdout
    found = [e for e in journal().events(rid) if e.kind == "verify_bisected"]
    assert len(found) == 1 and found[0].unit_id == "u02"
