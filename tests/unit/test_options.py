"""The run options' one declaration: what derives from it stays in step with it."""

from __future__ import annotations

import dataclasses

from distpar.coordinator import options as run_options
from distpar.coordinator.config import KEYS
from distpar.core.model import WorkerOptions


def test_the_worker_options_are_exactly_the_declared_ones_that_travel() -> None:
    travel = {name: default for name, o, default in run_options.declared() if o.worker}
    assert {f.name: f.default for f in dataclasses.fields(WorkerOptions)} == travel
    opts = run_options.RunOptions(stagger=0.7, hooks=True, setup="make", budget_usd=3.0)
    sent = run_options.worker_options(opts)
    assert (sent.stagger, sent.hooks, sent.setup) == (0.7, True, "make")


def test_config_keys_and_resume_overrides_come_from_the_declaration() -> None:
    assert set(KEYS) == {name for name, o, _ in run_options.declared() if o.config}
    assert {name for name, o, _ in run_options.declared() if o.resume} == {"timeout", "retries", "budget_usd"}


def test_the_journal_row_round_trips_and_reads_a_version_1_row() -> None:
    opts = run_options.RunOptions(timeout=12.0, forward_env=("A",), sandbox_allow=("/x",), warn_size=None)
    row = run_options.to_row(opts)
    assert row["version"] == run_options.ROW_VERSION
    assert run_options.from_row(row) == opts
    v1 = {"agent": {"preset": "fake"}, "timeout": 5, "retries": 1, "forward_env": ["B"], "hooks": True}
    back = run_options.from_row(v1, retries=4)
    assert (back.agent.preset, back.timeout, back.retries, back.forward_env, back.hooks) == ("fake", 5.0, 4, ("B",),
                                                                                            True)
