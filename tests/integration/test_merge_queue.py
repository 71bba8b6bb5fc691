"""--on-conflict: the merge queue (rerun) and the default stop, with real git and the fake agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distpar.coordinator.journal import Event, Journal
from distpar.core.errors import ExitCode
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, make_repo, sh_git, write_plan
from tests.conftest import run_distpar, wait_for
from tests.integration.conftest import run_plan

SIX = [f"u{i}" for i in range(1, 7)]


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def reruns(run_id: str) -> list[Event]:
    return [e for e in journal().events(run_id) if e.kind == "unit_rerun"]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# demo\n", "registry.txt": "# entries\n"})


def appending(ids: list[str]) -> list[dict[str, object]]:
    return [fake_batch(u, extra=[f"@fake append registry.txt 'entry {u}'"]) for u in ids]


def test_six_units_on_one_file_all_land_with_at_most_one_rerun_each(registry: Path) -> None:
    report, _runner = run_plan(registry, appending(SIX), workers=3, on_conflict="rerun")
    assert report.exit_code == ExitCode.OK, report.summary()
    lines = sh_git(registry, "show", "main:registry.txt").splitlines()
    assert lines[0] == "# entries" and sorted(lines[1:]) == sorted(f"entry {u}" for u in SIX)
    assert not gitops.dirty_files(registry)
    events = reruns(report.run_id)
    per_unit = [e.unit_id for e in events]
    assert len(per_unit) == len(set(per_unit)) and per_unit, per_unit  # at most one rerun per unit
    for e in events:
        assert e.data["files"] == ["registry.txt"] and e.data["with"] and "conflicts in registry.txt" in \
            e.data["reason"]
        # the earlier attempt is kept on its saved ref
        assert gitops.rev(registry, e.data["saved_ref"]) == e.data["earlier"]
    assert report.conflict is None


def test_without_the_flag_a_conflict_stops_and_the_target_is_untouched(registry: Path) -> None:
    start = gitops.rev(registry, "main")
    report, _runner = run_plan(registry, appending(SIX[:3]), workers=3)
    assert report.exit_code == ExitCode.CONFLICT
    assert gitops.rev(registry, "main") == start
    assert not reruns(report.run_id)


def test_the_rerun_prompt_names_the_conflict_and_the_earlier_diff(registry: Path, tmp_path: Path) -> None:
    batches = [fake_batch("a", extra=["@fake append registry.txt 'entry a'"]),
               fake_batch("b", extra=["@fake sleep 0.5", "@fake append registry.txt 'entry b'"])]
    report, _runner = run_plan(registry, batches, workers=2, on_conflict="rerun")
    assert report.exit_code == ExitCode.OK, report.summary()
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b"]
    (rerun,) = reruns(report.run_id)
    assert rerun.unit_id == "b" and rerun.data["with"] == ["a"] and rerun.data["base_units"] == ["a"]
    from distpar.coordinator import mergequeue
    note = mergequeue.note(registry, mergequeue.from_journal([rerun], ())["b"])
    assert "registry.txt" in note and "| +entry b" in note and rerun.data["saved_ref"] in note


def test_max_reruns_zero_is_the_stop_behaviour(registry: Path) -> None:
    start = gitops.rev(registry, "main")
    report, _ = run_plan(registry, appending(SIX[:2]), workers=2, on_conflict="rerun", max_reruns=0)
    assert report.exit_code == ExitCode.CONFLICT and gitops.rev(registry, "main") == start


def test_interrupt_and_resume_in_the_middle_of_the_queue(registry: Path, tmp_path: Path) -> None:
    """b's rerun runs (it waits, seeing a's entry), c waits behind it in the queue: Ctrl+C, then resume lands all
    three with one rerun each."""
    mark = tmp_path / "b-rerun-started"
    wait = f"@fake sh \"grep -q 'entry a' registry.txt && {{ touch {mark}; sleep 30; }} || true\""
    batches = [fake_batch("a", extra=["@fake append registry.txt 'entry a'"]),
               fake_batch("b", extra=["@fake sleep 0.3", wait, "@fake append registry.txt 'entry b'"]),
               fake_batch("c", extra=["@fake sleep 0.8", "@fake append registry.txt 'entry c'"])]
    plan = write_plan(tmp_path / "plan.md", batches)
    start = gitops.rev(registry, "main")
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--workers", "3", "--agent", "fake",
                             "--on-conflict", "rerun"], cwd=registry, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(mark.exists, timeout=60, what="b's rerun to start")
        run_id = wait_for(lambda: next((r["id"] for r in journal().runs()), ""), what="the run")
        wait_for(lambda: {e.unit_id for e in reruns(run_id)} == {"b", "c"}, timeout=60, what="c to join the queue")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert gitops.rev(registry, "main") == start
    plan.write_text(plan.read_text().replace("sleep 30", "true"))
    res = run_distpar("resume", run_id, cwd=registry, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b",
                                                                         "entry c"]
    assert sorted(e.unit_id or "" for e in reruns(run_id)) == ["b", "c"]  # one rerun each, across the resume
    status = run_distpar("status", run_id, cwd=registry)
    assert "rerun 1 of b (the merge queue): conflicts in registry.txt with a" in status.stdout, status.stdout
    assert "rerun 1 of c (the merge queue): conflicts in registry.txt with a" in status.stdout


def test_the_rerun_is_shown_live_and_in_the_summary(registry: Path, tmp_path: Path) -> None:
    from distpar.ops.live import event_line

    seen: list[tuple[str, dict[str, object]]] = []
    report, _ = run_plan(registry, appending(["a", "b"]), workers=2, on_conflict="rerun",
                         observer=lambda kind, data: seen.append((kind, data)))
    (q,) = report.summary()["reruns"]
    assert q["unit"] in ("a", "b") and q["count"] == 1
    (data,) = [d for k, d in seen if k == "unit_rerun"]
    line = event_line("unit_rerun", data)
    assert line is not None and "merge queue" in line[0] and q["unit"] in line[0]
    (ahead,) = [event_line(k, d) for k, d in seen if k == "conflict_predicted"]
    assert ahead is not None and ahead[0].endswith("(the merge queue takes it)")
    # every try's cost counts: three agent runs at the fake's $0.01 each
    assert report.spent == pytest.approx(0.03) and report.summary()["cost_usd"] == pytest.approx(0.03)


def test_the_mode_from_tool_distpar_and_a_bad_one_refused(registry: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.md", appending(["a", "b"]))
    (registry / "pyproject.toml").write_text('[tool.distpar]\non_conflict = "rerun"\n')
    sh_git(registry, "add", "pyproject.toml")
    sh_git(registry, "commit", "-qm", "config")
    out = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=registry)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(the merge queue): conflicts in registry.txt" in out.stdout
    (registry / "pyproject.toml").write_text('[tool.distpar]\non_conflict = "merge"\n')
    sh_git(registry, "commit", "-qam", "bad config")
    head = gitops.rev(registry, "main")
    bad = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=registry)
    assert bad.returncode == ExitCode.USAGE
    assert "--on-conflict: 'merge' is not one of stop, rerun, resolve" in bad.stderr
    assert gitops.rev(registry, "main") == head
