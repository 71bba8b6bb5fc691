"""CAST plans run with their meaning, on real git with the fake agent: ordered stages, each agent of a parallel
batch its own unit (fan-out) merged before the next stage (fan-in), verify_files, fan-out answers, the plan file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.core.model import UnitStatus
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


def agent(prompt_lines: list[str], kind: str = "general-purpose") -> dict[str, str]:
    return {"subagent_type": kind, "prompt": "\n".join(["Do the work.", *prompt_lines])}


def stage(bid: int, agents: list[dict[str, str]], parallel: bool = True, **fields: Any) -> dict[str, Any]:
    return {**fake_batch(bid), "parallel": parallel, "agents": agents, **fields}


def test_stages_fan_out_and_fan_in_each_stage_finds_the_work_before_it(repo: Path) -> None:
    """4 stages, no depends_on: 3 parallel agents; 1 that needs all three; 2 parallel that need it; 1 last."""
    batches = [
        stage(1, [agent([f"@fake write part{k}.txt {k}", "@fake sleep 0.3"]) for k in (1, 2, 3)]),
        stage(2, [agent(["@fake copy part1.txt seen1.txt", "@fake copy part2.txt seen2.txt",
                         "@fake copy part3.txt seen3.txt", "@fake write wired.txt yes"])]),
        stage(3, [agent([f"@fake copy wired.txt wired-seen{k}.txt"]) for k in (1, 2)]),
        stage(4, [agent(["@fake copy wired-seen1.txt final1.txt", "@fake copy wired-seen2.txt final2.txt"])]),
    ]
    report, runner = run_plan(repo, batches, workers=3, independent_plan=False)
    assert report.exit_code == ExitCode.OK, [(r.unit_id, r.error) for r in report.results]
    assert runner.graph.rule == "stages"
    assert [r.unit_id for r in report.results] == ["1#1", "1#2", "1#3", "2", "3#1", "3#2", "4"]
    # Stage 1's three agents ran at once, on three workers; each stage saw all the work of the stages before.
    assert len({r.worker for r in report.results if r.unit_id.startswith("1#")}) == 3
    for k in (1, 2, 3):
        assert (repo / f"seen{k}.txt").read_text() == str(k)
    assert (repo / "final1.txt").read_text() == "yes" and (repo / "final2.txt").read_text() == "yes"
    starts = {e.unit_id: e.ts for e in journal().events(report.run_id) if e.kind == "unit_started"}
    ends = {r.unit_id: r.ended or 0.0 for r in report.results}
    assert starts["2"] >= max(ends["1#1"], ends["1#2"], ends["1#3"])  # fan-in before the next stage
    assert min(starts["3#1"], starts["3#2"]) >= ends["2"] and starts["4"] >= max(ends["3#1"], ends["3#2"])


def test_siblings_that_conflict_are_reported_and_never_resolved(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    batches = [
        stage(1, [agent(["@fake write same.txt one"]), agent(["@fake write same.txt two"])]),
        stage(2, [agent(["@fake write after.txt x"])]),
    ]
    report, runner = run_plan(repo, batches, workers=2, independent_plan=False)
    status = {r.unit_id: r.status for r in report.results}
    assert status == {"1#1": UnitStatus.OK, "1#2": UnitStatus.OK, "2": UnitStatus.BLOCKED}
    assert report.exit_code == ExitCode.CONFLICT and report.conflict is not None
    assert report.conflict.stage == "dependency" and report.conflict.files == ("same.txt",)
    assert gitops.rev(repo, "main") == start
    assert sh_git(repo, "show", f"{runner.branch('1#1')}:same.txt") == "one"
    assert sh_git(repo, "show", f"{runner.branch('1#2')}:same.txt") == "two"


def test_a_sequential_batch_runs_its_agents_one_after_another_on_the_same_work(repo: Path) -> None:
    batches = [stage(1, [agent(["@fake append log.txt first"]), agent(["@fake append log.txt second"])],
                     parallel=False)]
    report, _ = run_plan(repo, batches, workers=2, independent_plan=False)
    assert report.exit_code == ExitCode.OK
    assert (repo / "log.txt").read_text() == "first\nsecond\n"


def test_verify_files_fail_the_batch_naming_what_is_missing(repo: Path) -> None:
    batches = [
        stage(1, [agent(["@fake write a.txt a"]), agent(["@fake write b.txt b"])],
              verify_files=["a.txt", "b.txt", "docs/missing.md"]),
        stage(2, [agent(["@fake write later.txt l"])]),
    ]
    report, _ = run_plan(repo, batches, workers=2, independent_plan=False)
    failed = [r for r in report.results if r.status is UnitStatus.FAILED]
    assert len(failed) == 1 and "verify_files: batch 1 left no docs/missing.md" in failed[0].error
    later = next(r for r in report.results if r.unit_id == "2")
    assert later.status is UnitStatus.SKIPPED and report.exit_code == ExitCode.BATCH_FAILED


def test_fan_out_answers_reach_the_next_batch_and_the_plan_file_travels(repo: Path) -> None:
    batches = [
        stage(1, [agent(["@fake print-env DISTPAR_BATCH_ID"], "researcher"),
                  agent(["@fake print-env DISTPAR_BATCH_ID"], "critic")], type="fan-out"),
        stage(2, [agent(["@fake print-env DISTPAR_PLAN_FILE", "@fake write done.txt ok"])]),
    ]
    report, runner = run_plan(repo, batches, workers=2, independent_plan=False, keep_branches=True)
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    prompt = (runner.run_dir / "logs" / "2.prompt.md").read_text()
    assert prompt.startswith("Fan-out Summary (Batch 1):")
    assert "- researcher: " in prompt and "- critic: " in prompt
    log = (runner.run_dir / "logs" / "2.log").read_text()
    plan_file = next(line.split("=", 1)[1] for line in log.splitlines() if line.startswith("DISTPAR_PLAN_FILE="))
    assert '"plan_id": "test-plan"' in Path(plan_file).read_text()


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def test_unit_ids_map_to_distinct_safe_names(repo: Path) -> None:
    batches = [fake_batch("a/b", writes={"x1.txt": "1"}), fake_batch("a b", writes={"x2.txt": "2"}),
               fake_batch("..", writes={"x3.txt": "3"})]
    report, runner = run_plan(repo, batches, workers=2, keep_branches=True)
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    names = {runner.branch(b["id"]) for b in batches}
    assert len(names) == 3 and all(gitops.try_rev(repo, f"refs/heads/{n}") for n in names)
    logs = {Path(r.log_path or "").name for r in report.results}
    assert len(logs) == 3
    assert json.dumps(sorted(r.unit_id for r in report.results)) == json.dumps(sorted(["a/b", "a b", ".."]))


def test_a_unit_that_edits_files_another_unit_owns_is_reported(repo: Path) -> None:
    batches = [
        stage(1, [{**agent(["@fake write api/schema.txt mine"]), "owns_files": ["api/"]},
                  {**agent(["@fake write ui/view.txt v", "@fake write api/extra.txt sneaky"]),
                   "owns_files": ["ui/view.txt"]}]),
    ]
    report, _ = run_plan(repo, batches, workers=2, independent_plan=False)
    assert report.exit_code == ExitCode.OK
    notes = {r.unit_id: r.notes for r in report.results}
    assert notes["1#2"] == ("edited api/extra.txt that unit 1#1 owns (owns_files)",)
    assert notes["1#1"] == ()
    ended = [e for e in journal().events(report.run_id) if e.kind == "unit_ended" and e.unit_id == "1#2"]
    assert ended and ended[-1].data.get("notes") == ["edited api/extra.txt that unit 1#1 owns (owns_files)"]
