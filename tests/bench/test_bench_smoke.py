"""The benchmark machinery end to end on the tiny profile (seconds): the files it writes and their structure.
No timing is asserted: the numbers of a tiny run mean nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.config import TINY
from bench.plans import make_shape
from bench.suite import SECTIONS, run_suite

pytestmark = pytest.mark.integration

TARGET_STATUSES = {"pass", "miss", "not measured"}


def test_tiny_profile_writes_results_report_and_plots(tmp_path: Path) -> None:
    run_suite(TINY, tmp_path, log=lambda msg: None)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["schema"] == 1
    assert results["profile"] == "tiny"
    machine = results["machine"]
    for key in ("cpu_count", "cpu_model", "memory_gib", "os", "python", "git", "distpar"):
        assert key in machine
    assert results.get("section_errors") is None
    assert set(results["sections"]) == set(SECTIONS)
    assert results["failed_runs"] == []

    sp = results["sections"]["speedup"]
    assert [r["workers"] for r in sp["speedup"]["rows"]] == [1, *TINY.speedup_workers]
    for row in sp["speedup"]["rows"]:
        assert len(row["runs"]) == TINY.reps == row["wall"]["n"]
        assert set(row["efficiency"]) == {"median", "min", "max"}
    assert sp["done_when"]["workers"] == TINY.done_when[2]

    sched = results["sections"]["scheduling"]
    shapes = {r["shape"] for r in sched["predicted"]}
    assert shapes == {"independent-equal", "independent-heavy-tailed", "chains", "diamonds", "mixed-dag"}
    for row in sched["predicted"]:
        for strategy in ("balanced", "midpoint", "round-robin"):
            assert row[strategy]["ratio"] >= 1.0 - 1e-9  # never below the lower bound
    assert {r["strategy"] for r in sched["measured"]} == {"balanced", "midpoint", "round-robin"}

    # issue 11's spread plan, small: it ran and produced its ratios (never judged on timing here)
    spread = results["sections"]["dispatch"]["spread"]
    n, _, _, workers = TINY.spread_plan
    assert (spread["plan"]["batches"], spread["plan"]["workers"]) == (n, workers)
    assert [r["estimates"] for r in spread["rows"]] == list(TINY.spread_estimates)
    for row in spread["rows"]:
        for key in ("wall_ratio", "span_ratio"):
            assert row[key]["n"] == TINY.light_reps and row[key]["median"] > 0
        assert row["dispatch_ratio"] >= 1.0 - 1e-9 and row["static_ratio"] >= 1.0 - 1e-9
        assert {u for u, *_ in row["runs"][0]["timeline"]} == {f"b{i}" for i in range(1, n + 1)}
    # issue 15's stages: whatever the timing, every stage found the earlier stages' work and ran after them
    cast = results["sections"]["dispatch"]["cast_stages"]
    assert cast["form"] in ("explicit depends_on", "CAST plan (unit graph)")
    assert cast["wall_ratio"]["n"] == TINY.light_reps
    assert all(c["found_previous_work"] and c["stages_in_order"] for c in cast["checks"]), cast["checks"]

    overhead = results["sections"]["overhead"]
    assert {(r["files"], r["workers"]) for r in overhead["runs"]} == {
        (f, w) for f, workers in TINY.overhead_runs.items() for w in workers}
    for row in overhead["runs"]:
        assert set(row["phases"]) >= {"planning", "prepare", "agent_start", "commit_and_return", "dispatch",
                                      "merge", "cleanup"}
    assert [g["files"] for g in overhead["git_operations"]] == list(TINY.gitops_repos)

    scale = results["sections"]["scale"]
    assert [r["batches"] for r in scale["planning"]] == list(TINY.scale_sizes)
    assert scale["journal"]["bytes_per_batch"] > 0
    assert [r["units"] for r in scale["run_state"]] == [len(make_shape("mixed-dag", n)) for n in TINY.scale_sizes]
    assert scale["memory"]["workers"] == TINY.memory_workers
    assert scale["memory"]["peak_rss_mib"] > 0

    backends = results["sections"]["backends"]["backends"]
    assert backends["local"]["available"] is True
    for name in ("ray", "ssh"):
        assert backends[name]["available"] or backends[name]["reason"]

    tail = results["sections"]["tail"]["runs"]
    assert [r["units"] for r in tail] == list(TINY.tail_sizes)
    for r in tail:  # the parts account for the tail (what is left is the bench's own bookkeeping)
        assert r["tail"] > 0 and abs(r["tail"] - sum(r["parts"].values()) - r["unaccounted"]) < 0.01
        assert r["git_processes"]["merge"] < 12 and r["unaccounted"] < 0.5

    assert results["targets"] and all(t["status"] in TARGET_STATUSES for t in results["targets"])

    report = (tmp_path / "REPORT.md").read_text()
    for heading in ("## Targets", "## 1. Speedup", "## 2. Scheduling quality", "## 2b. Run-time dispatch",
                    "## 3. Overhead",
                    "## 4. Coordinator scale", "## 5. Backends", "## 7. The tail", "## 9. Repeat runs"):
        assert heading in report

    if importlib.util.find_spec("matplotlib") is None:  # the plots come with the `bench` extra
        assert results["plots"] == [] and "bench" in results["plots_skipped"]
    else:
        assert sorted(results["plots"]) == ["dispatch.png", "overhead.png", "scheduling.png", "speedup.png"]
        for name in results["plots"]:
            assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
