"""The benchmark's own pure parts: the plans it builds and the simulation of the run state it compares with."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import simulate
from bench.dispatch import bound, stage_checks
from bench.harness import RunRecord, Session
from bench.plans import cast_manifest, make_shape, rank_correlation, spread, stages, to_plan, with_estimates
from distpar.core.plan import DEFAULT_ESTIMATE, parse_plan
from distpar.core.schedule import make_schedule
from distpar.testing.builders import make_repo, plan_text, sh_git


def test_spread_is_seeded_and_spans_the_range_exactly() -> None:
    nodes = spread(16, 1.0, 12.0)
    secs = [x.seconds for x in nodes]
    assert min(secs) == 1.0 and max(secs) == 12.0
    assert secs == [x.seconds for x in spread(16, 1.0, 12.0)]
    assert secs != [x.seconds for x in spread(16, 1.0, 12.0, seed=12)]
    assert all(x.estimate is None and not x.deps for x in nodes)


def test_estimates_none_wrong_exact() -> None:
    nodes = spread(16, 1.0, 12.0)
    none, wrong, exact = (with_estimates(nodes, m) for m in ("none", "wrong", "exact"))
    assert all(x.estimate is None for x in none)
    assert [x.estimate for x in exact] == [x.seconds for x in nodes]
    assert sorted(x.estimate or 0 for x in wrong) == sorted(x.seconds for x in nodes)  # same values, shuffled
    assert [x.estimate for x in wrong] != [x.seconds for x in nodes]
    assert rank_correlation([1, 2, 3], [1, 2, 3]) == 1.0 and rank_correlation([1, 2, 3], [3, 2, 1]) == -1.0
    # a plan that gives no estimate has none in the manifest (the parser's default applies)
    assert {b.estimate for b in to_plan(none).batches} == {DEFAULT_ESTIMATE}
    with pytest.raises(ValueError, match="unknown estimate mode"):
        with_estimates(nodes, "roughly")


def test_static_simulation_reproduces_the_schedulers_makespan() -> None:
    nodes = make_shape("mixed-dag", 24)
    plan = to_plan(nodes)
    secs = {x.id: x.seconds / 60.0 for x in nodes}
    for strategy in ("balanced", "midpoint", "round-robin"):
        sched = make_schedule(plan, 4, strategy)
        assert simulate.static(plan, sched, secs).makespan == pytest.approx(sched.makespan)


def test_dispatch_simulation_is_list_scheduling_by_priority() -> None:
    nodes = with_estimates(spread(8, 1.0, 8.0), "exact")
    plan = to_plan(nodes)
    secs = {x.id: x.seconds for x in nodes}
    sim = simulate.dispatch(plan, make_schedule(plan, 2), secs)
    assert sorted(u for u, *_ in sim.timeline) == sorted(secs)
    first = [u for u, _, start, _ in sim.timeline if start == 0.0]
    assert sorted(first) == sorted(sorted(secs, key=secs.__getitem__)[-2:])  # the two longest start first
    assert sim.makespan >= bound(nodes, 2) - 1e-9
    busy = {w: 0.0 for w in (0, 1)}
    for _, w, start, end in sorted(sim.timeline, key=lambda t: t[2]):
        assert start == pytest.approx(busy[w])  # a worker is never idle while work is ready
        busy[w] = end


def test_cast_manifest_and_its_explicit_form_state_the_same_stages() -> None:
    durations = [[3.0, 3.0, 3.0], [1.0], [2.0, 2.0], [1.0]]
    plan = parse_plan(plan_text(cast_manifest(durations, "r1")))
    assert [len(b.agents) for b in plan.batches] == [3, 1, 2, 1]
    assert [b.parallel for b in plan.batches] == [True, False, True, False]
    assert not plan.has_dependencies
    explicit = {x.id: set(x.deps) for x in stages(durations)}
    assert explicit["s2a1"] == {"s1a1", "s1a2", "s1a3"}
    assert explicit["s3a1"] == explicit["s3a2"] == {"s2a1"}
    assert explicit["s4a1"] == {"s3a1", "s3a2"}


@pytest.mark.integration  # real git
def test_stage_checks_see_missing_work_and_overlapping_stages(tmp_path: Path) -> None:
    session = Session(tmp_path / "scratch", log=lambda msg: None)
    repo = session.repo(2)
    good_files = {"bench/r1/s1a1.txt": "x", "bench/r1/s2a1.txt": "y"}
    for name, text in good_files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    sh_git(repo, "add", "--all")
    sh_git(repo, "commit", "--quiet", "-m", "stages 1 and 2")
    with_both = sh_git(repo, "rev-parse", "HEAD")
    bare = make_repo(tmp_path / "other")  # a commit without stage 1's work, fetched into the session's repo
    sh_git(repo, "fetch", "--quiet", str(bare), "main:refs/heads/bare")
    without = sh_git(repo, "rev-parse", "bare")

    def record(commits: dict[str, str], timeline: list[list[object]]) -> RunRecord:
        return RunRecord("t", "local", "balanced", 2, 2, 2, "ok", 1, 0, 0, 1, 1, {}, 1, 1, 1, {}, 0, "r1",
                         timeline, commits)

    stage_of = {"s1a1": 1, "s2a1": 2}
    ok = stage_checks(session, record({"s1a1": with_both, "s2a1": with_both},
                                      [["s1a1", 0, 0.0, 1.0], ["s2a1", 0, 1.5, 2.0]]), stage_of)
    assert ok["found_previous_work"] and ok["stages_in_order"]
    bad = stage_checks(session, record({"s1a1": with_both, "s2a1": without},
                                       [["s1a1", 0, 0.0, 1.0], ["s2a1", 1, 0.5, 2.0]]), stage_of)
    assert not bad["found_previous_work"] and bad["missing"] == ["s2a1 lacks stage(s) [1]"]
    assert not bad["stages_in_order"]
    session.close()


def test_cast_form_maps_each_unit_of_the_unit_graph_to_its_stage_and_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a unit graph of the plan helper's shape (uid ``<batch>#<k>`` per agent of a parallel batch), each
    unit's sleep and stage come from the graph; a graph that is not the stages rule is not measured as one."""
    from dataclasses import dataclass

    from bench import dispatch

    @dataclass(frozen=True)
    class Unit:
        uid: str
        batch_id: str
        index: int | None

    @dataclass(frozen=True)
    class Graph:
        units: tuple[Unit, ...]
        rule: str

    def stages_graph(plan: object) -> Graph:
        units = []
        for b in plan.batches:  # type: ignore[attr-defined]
            n = len(b.agents)
            units += [Unit(b.id if n == 1 else f"{b.id}#{k}", b.id, None if n == 1 else k) for k in range(1, n + 1)]
        return Graph(tuple(units), "stages")

    durations = [[3.0, 3.0, 3.0], [1.0], [2.0, 2.0], [1.0]]
    monkeypatch.setattr(dispatch, "unit_graph_fn", lambda: stages_graph)
    form = dispatch._cast_form(durations)
    assert not isinstance(form, str)
    manifest, sleeps, stage_of = form
    assert sleeps == {"stage1#1": 3.0, "stage1#2": 3.0, "stage1#3": 3.0, "stage2": 1.0, "stage3#1": 2.0,
                      "stage3#2": 2.0, "stage4": 1.0}
    assert stage_of["stage3#2"] == 3 and stage_of["stage4"] == 4
    assert [b["id"] for b in manifest("r9")] == ["stage1", "stage2", "stage3", "stage4"]

    monkeypatch.setattr(dispatch, "unit_graph_fn", lambda: lambda plan: Graph(stages_graph(plan).units, "dag"))
    assert "not 7 under 'stages'" in str(dispatch._cast_form(durations))
    monkeypatch.setattr(dispatch, "unit_graph_fn", lambda: None)
    assert "no unit graph yet" in str(dispatch._cast_form(durations))
