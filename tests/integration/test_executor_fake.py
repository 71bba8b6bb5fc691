"""The executor's retry, requeue and drain paths, driven by the shipped fake backend (distpar/backends/fake.py):
scripted workers that make real commits on the unit branches, so everything after them (dependency merges, the
journal, the landing) is the real thing, with no agent and no worker process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from distpar.backends.fake import FakeBackend, commit, fail, garbled, hang, lost, rate_limited
from distpar.coordinator.journal import Journal
from distpar.coordinator.runtime import RunReport
from distpar.core.errors import ExitCode
from distpar.core.model import UnitStatus
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, tree_files
from tests.integration.conftest import run_plan


def fake_run(repo: Path, batches: list[dict[str, Any]], script: dict[str, Any], workers: int = 1,
             limit: float | None = None, **options: Any) -> tuple[RunReport, FakeBackend]:
    """``run_plan`` on the fake backend with ``script``; the report and the backend (what was dispatched)."""
    backend = FakeBackend(script, **({"limit": limit} if limit is not None else {}))
    report, runner = run_plan(repo, batches, workers=workers, backend=backend, **options)
    assert runner.backend is backend
    return report, backend


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def kinds(run_id: str, kind: str) -> list[dict[str, object]]:
    return [{"unit": e.unit_id, **e.data} for e in journal().events(run_id) if e.kind == kind]


def plan(*ids: str, **deps: list[str]) -> list[dict[str, object]]:
    """Batches ``ids``, then those named only in ``deps`` (batch -> the batches it depends on)."""
    every = [*ids, *(b for b in deps if b not in ids)]
    return [fake_batch(b, depends_on=deps[b]) if b in deps else fake_batch(b) for b in every]


def test_a_lost_transport_is_retried_and_the_retry_lands(repo: Path) -> None:
    script = {"a": [lost("node gone"), lost("node gone again"), commit({"a.txt": "a\n"})]}
    report, backend = fake_run(repo, plan("a"), script, retries=2)
    assert [(d.uid, d.attempt, d.act) for d in backend.dispatches] == [("a", 1, "lost"), ("a", 2, "lost"),
                                                                        ("a", 3, "commit")]
    assert report.exit_code == ExitCode.OK, report.errors
    assert backend.cancels == 0  # a retry stops nothing else
    assert (repo / "a.txt").read_text() == "a\n" and "a.txt" in tree_files(repo, "main")
    assert [e["error"] for e in kinds(report.run_id, "unit_error")] == ["node gone", "node gone again"]
    assert [(e["attempt"], e["error"]) for e in kinds(report.run_id, "unit_retry")] == [(2, "node gone"),
                                                                                          (3, "node gone again")]


def test_a_lost_transport_is_retried_at_most_retries_times(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    script = {"a": lost("node gone"), "b": commit({"b.txt": "b\n"})}
    report, backend = fake_run(repo, plan("a", "b", c=["a"]), script,
                              retries=1)
    assert [(d.uid, d.attempt) for d in backend.dispatches if d.uid == "a"] == [("a", 1), ("a", 2)]
    status = {r.unit_id: (r.status, r.error) for r in report.results}
    assert status == {"a": (UnitStatus.FAILED, "node gone"), "b": (UnitStatus.OK, ""),
                      "c": (UnitStatus.SKIPPED, "dependency a did not succeed")}
    assert report.exit_code == ExitCode.BATCH_FAILED and gitops.rev(repo, "main") == start
    assert "c" not in {d.uid for d in backend.dispatches}


def test_a_deterministic_failure_is_not_retried(repo: Path) -> None:
    script = {"a": fail("the tests do not pass"), "b": commit({"b.txt": "b\n"})}
    report, backend = fake_run(repo, plan("a", "b"), script, retries=3)
    assert sorted((d.uid, d.attempt) for d in backend.dispatches) == [("a", 1), ("b", 1)]
    r = {x.unit_id: x for x in report.results}
    assert r["a"].status is UnitStatus.FAILED and r["a"].error == "the tests do not pass"
    assert r["b"].status is UnitStatus.OK
    assert kinds(report.run_id, "unit_retry") == [] and kinds(report.run_id, "unit_error") == []
    assert report.exit_code == ExitCode.BATCH_FAILED


def test_a_rate_limited_unit_goes_back_to_the_queue_and_starts_again(repo: Path) -> None:
    script = {"a": [rate_limited(0.2), commit({"a.txt": "a\n"})], "b": commit({"b.txt": "b\n"}, after=0.3)}
    t0 = time.time()
    report, backend = fake_run(repo, plan("a", "b"), script, workers=2,
                              agent_retries=2)
    dispatches = [d for d in backend.dispatches if d.uid == "a"]
    # Twice, with the same attempt and base: a rate limit is the run's signal, not a failure of the unit.
    assert [(d.attempt, d.act) for d in dispatches] == [(1, "rate_limited"), (1, "commit")]
    assert dispatches[0].base == dispatches[1].base
    assert report.exit_code == ExitCode.OK, report.errors
    a = next(r for r in report.results if r.unit_id == "a")
    assert a.status is UnitStatus.OK and a.tries == 2 and a.try_classes == ("api_error", "success")
    throttled = kinds(report.run_id, "unit_throttled")
    assert [(e["unit"], e["requeued"], e["retry_after"]) for e in throttled] == [("a", 1, 0.2)]
    paused = kinds(report.run_id, "throttled")[0]
    assert paused["until"] is not None and paused["limit"] == 1  # half the agents, and a pause
    assert {"a.txt", "b.txt"} <= set(tree_files(repo, "main")) and time.time() - t0 < 60


def test_a_unit_rate_limited_more_than_agent_retries_times_fails(repo: Path) -> None:
    script = {"a": rate_limited(0.05, message="429 again")}
    report, backend = fake_run(repo, plan("a"), script, agent_retries=1)
    assert [(d.attempt, d.act) for d in backend.dispatches] == [(1, "rate_limited"), (1, "rate_limited")]
    (a,) = report.results
    assert a.status is UnitStatus.FAILED and a.error == "429 again" and a.tries == 2
    assert len(kinds(report.run_id, "unit_throttled")) == 1


def test_an_error_while_units_run_cancels_them_and_takes_their_results(repo: Path) -> None:
    """A unit hands its work back in a bundle git cannot read (a transfer that broke): git fails under the
    coordinator. The run stops: the unit still running is cancelled, its result taken and journaled, nothing
    new starts, and the target is left alone, all well within CANCEL_WAIT."""
    start = gitops.rev(repo, "main")
    script = {"a": commit({"a.txt": "a\n"}), "b": garbled(until=("a",)), "slow": hang()}
    t0 = time.time()
    report, backend = fake_run(repo, plan("a", "b", "slow", c=["a", "b"]), script, workers=3)
    took = time.time() - t0
    assert backend.cancels == 1  # the run's own cancel, when git failed under it
    assert report.exit_code == ExitCode.BACKEND
    assert len(report.errors) == 1 and "fetch" in report.errors[0], report.errors
    status = {r.unit_id: r.status for r in report.results}
    assert status["slow"] is UnitStatus.INTERRUPTED  # cancelled, and its result taken in
    assert status["a"] is UnitStatus.OK and "c" not in {d.uid for d in backend.dispatches}
    row = journal().unit(report.run_id, "slow")
    assert row is not None and row["state"] == "interrupted"
    assert gitops.rev(repo, "main") == start and took < 30


def test_a_free_worker_takes_every_short_unit_while_a_long_one_runs(repo: Path) -> None:
    """The dispatch choice through the whole executor, without timing: the long unit ends only once the four
    short ones have, so they can only have run on the other worker, one after another as it came free."""
    shorts = [f"s{i}" for i in range(4)]
    script = {"long": commit({"l.txt": "l\n"}, until=shorts), **{s: commit({f"{s}.txt": s}) for s in shorts}}
    report, backend = fake_run(repo, plan("long", *shorts), script, workers=2)
    assert report.exit_code == ExitCode.OK, report.errors
    worker = {d.uid: d.worker for d in backend.dispatches}
    assert {worker[s] for s in shorts} == {1 - worker["long"]}
    assert {b["unit_id"]: b["worker"] for b in journal().units(report.run_id)} == worker


def test_a_hang_nobody_cancels_fails_once_after_the_backends_limit(repo: Path) -> None:
    """The fake backend's own bound: a scripted wait that nothing ends fails the unit (not retried) instead of
    hanging the test."""
    t0 = time.time()
    report, backend = fake_run(repo, plan("a"), {"a": hang()}, limit=0.5)
    (a,) = report.results
    assert a.status is UnitStatus.FAILED and "waited 0.5s: a hang nobody cancelled" in a.error
    assert len(backend.dispatches) == 1 and time.time() - t0 < 30
