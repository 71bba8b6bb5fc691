"""The bench's repeat-runs section (issue 23): the tiny profile runs it for real (50 files, a 0.3-s setup, local
only) and its numbers must be present and sane; its readiness reading, checks, targets and report are pure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import repeat
from bench.config import TINY
from bench.report import _table
from bench.report23 import _target
from bench.suite import run_suite
from distpar.coordinator.journal import Event


def _ready(worker: int, how: str, setup: str, seconds: float = 0.5) -> Event:
    data = {"worker": worker, "node": "n1", "how": how, "reason": "" if how == "new" else "pool",
            "seconds": seconds, "setup": setup, "setup_seconds": 0.3 if setup == "ran" else 0.0}
    return Event(worker + 1, "run", 1.0, "workspace_ready", worker, f"b{worker}", data)


def _row(ratio: float, second_how: str = "reused") -> dict[str, Any]:
    one = {"label": "run1", "wall": 10.0, "after": 0.1, "loadavg": [0.5, 0.5, 0.5],
           "ready": repeat.readiness([_ready(w, "new", "ran") for w in range(4)])}
    two = {"label": "run2", "wall": 10.0 * ratio, "after": 0.1, "loadavg": [0.6, 0.5, 0.5],
           "ready": repeat.readiness([_ready(w, second_how, "kept") for w in range(4)])}
    return {"files": 1000, "backend": "local", "where": "here", "runs": [one, two], "ratio": ratio,
            "checks": repeat.checks(one, two, 4)}


def test_readiness_reads_one_row_per_worker_in_worker_order() -> None:
    other = Event(9, "run", 1.0, "unit_ended", 0, "b0", {})
    ready = repeat.readiness([_ready(2, "reused", "kept"), other, _ready(0, "new", "ran", 1.23456)])
    assert [r["worker"] for r in ready] == [0, 2]
    assert ready[0] == {"worker": 0, "node": "n1", "how": "new", "reason": "", "seconds": 1.235, "setup": "ran",
                        "setup_seconds": 0.3}


def test_targets_pass_only_under_the_ratio_with_every_workspace_reused() -> None:
    [ok] = repeat.targets({"rows": [_row(0.4)]}, _target)
    assert ok["status"] == "pass" and "0.40 x" in ok["measured"]
    [slow] = repeat.targets({"rows": [_row(0.7)]}, _target)
    assert slow["status"] == "miss"
    [rebuilt] = repeat.targets({"rows": [_row(0.4, second_how="rebuilt")]}, _target)
    assert rebuilt["status"] == "miss" and "run2_reused_and_setup_kept" in rebuilt["note"]
    [broken] = repeat.targets({"rows": [{"files": 50, "backend": "ray", "error": "not available: no ray"}]}, _target)
    assert broken["status"] == "not measured" and "no ray" in broken["note"]
    [missing] = repeat.targets(None, _target)
    assert missing["status"] == "not measured"


def test_markdown_has_the_walls_the_ratio_and_each_workers_readiness() -> None:
    data = {"rows": [_row(0.4), {"files": 20000, "backend": "ssh", "error": "could not start it"}],
            "target": repeat.TARGET, "setup": "sleep 3", "setup_key": "package.json"}
    text = "\n".join(repeat.markdown(data, _table))
    assert "## 9. Repeat runs" in text and "**0.400**" in text and "could not start it" in text
    assert "w3@n1: 0.5 s reused, setup kept (pool)" in text and "w0@n1: 0.5 s new, setup ran 0.3 s" in text


@pytest.mark.integration
def test_tiny_repeat_section_reuses_every_workspace_on_the_second_run(tmp_path: Path) -> None:
    run_suite(TINY, tmp_path, sections=("repeat",), log=lambda msg: None)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results.get("section_errors") is None, results.get("section_errors")
    assert results["failed_runs"] == []
    rows = results["sections"]["repeat"]["rows"]
    assert [(r["files"], r["backend"]) for r in rows] == [(50, "local")]
    [row] = rows
    assert "error" not in row, row
    one, two = row["runs"]
    assert one["units"] == two["units"] == TINY.repeat_units
    assert two["wall"] > 0 and one["wall"] > 0 and row["ratio"] == round(two["wall"] / one["wall"], 3)
    assert row["checks"] == {"every_worker_reported": True, "run1_new_and_setup_ran": True,
                             "run2_reused_and_setup_kept": True}
    for r in one["ready"]:  # the fresh pool: each workspace built and its setup run (it sleeps the setup's seconds)
        assert r["setup_seconds"] >= TINY.repeat_setup and r["seconds"] >= r["setup_seconds"], r
    for r in two["ready"]:  # reused: no setup, and readiness well under the setup's own sleep
        assert r["seconds"] < TINY.repeat_setup + max(x["seconds"] for x in one["ready"]), r
    assert {r["node"] for r in one["ready"] + two["ready"]} and all(r["node"] for r in two["ready"])
    for run in (one, two):  # the split accounts for the wall (the rest: the bench's own reads of the clock)
        assert set(run["split"]) == set(repeat.SPLIT) and abs(sum(run["split"].values()) - run["wall"]) < 0.1, run
    [target] = [t for t in results["targets"] if t["name"].startswith("repeat runs")]
    assert target["status"] in ("pass", "miss")  # tiny numbers are not judged; the target is computed
    report = (tmp_path / "REPORT.md").read_text()
    assert "## 9. Repeat runs (issue 23)" in report and f"**{row['ratio']:.3f}**" in report
    assert "| local | 50 | run2 | " + f"{two['wall']:.2f} | " in report


def test_split_adds_up_to_the_wall_from_the_event_times() -> None:
    def ev(kind: str, ts: float) -> Event:
        return Event(1, "run", ts, kind, None, None, {})
    events = [ev("unit_submitted", 101.5), ev("unit_submitted", 101.6), ev("unit_ended", 104.0),
              ev("unit_ended", 105.0), ev("merge_started", 105.5), ev("merged", 106.0)]
    assert repeat.split(events, 100.0, 101.0, 107.0) == {"preflight": 1.0, "startup": 0.5, "units": 3.5,
                                                         "to_merge": 0.5, "merge": 0.5, "end": 1.0}


def test_a_ray_node_id_is_shortened_in_the_report() -> None:
    row = _row(0.4)
    for run in row["runs"]:
        for r in run["ready"]:
            r["node"] = "edce632a1cbb1edc3f936d1a4e26279494789554c3eac3126e505406"
    text = "\n".join(repeat.markdown({"rows": [row], "target": 0.6, "setup": "s", "setup_key": "k"}, _table))
    assert "w0@edce632a: " in text and "1cbb1edc" not in text
