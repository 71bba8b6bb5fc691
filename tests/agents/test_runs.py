"""Every preset end to end through the real worker: the fake agent emulates each CLI in a real subprocess.

Classification, retries of transient failures (and only those), cost and token totals, timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.core.model import AgentConfig, UnitResult, UnitStatus
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, tree_files
from tests.conftest import processes_with_mark
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration

PRESETS = ("claude", "codex", "gemini", "aider")
REPORTS_COST = {"claude": True, "codex": False, "gemini": False, "aider": True}
# What each CLI reports when it stops at its turn limit: claude and gemini have one, codex and aider do not
# (their fake reports a plain failure).
MAX_TURNS_CLASS = {"claude": "max_turns", "codex": "error", "gemini": "max_turns", "aider": "error"}


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def by_id(results: list[UnitResult]) -> dict[str, UnitResult]:
    return {r.unit_id: r for r in results}


@pytest.mark.parametrize("preset", PRESETS)
def test_success_with_exact_cost_and_token_totals(repo: Path, preset: str) -> None:
    batches = [fake_batch(i, writes={f"f{i}.txt": f"{i}\n"}, extra=["@fake cost 0.25", "@fake tokens 100 20"])
               for i in (1, 2, 3)]
    report, _ = run_plan(repo, batches, workers=2, agent=AgentConfig(preset))
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    assert {f"f{i}.txt" for i in (1, 2, 3)} <= set(tree_files(repo))
    assert all(r.outcome and r.outcome.result_class == "success" and r.tries == 1 and r.changed
               for r in report.results)
    assert report.tokens() == (300, 60)
    assert report.cost_usd == (0.75 if REPORTS_COST[preset] else None)
    j = journal()
    rows = j.units(report.run_id)
    assert [(r["result_class"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("success", 100, 20)] * 3
    assert [r["cost_usd"] for r in rows] == [0.25 if REPORTS_COST[preset] else None] * 3
    summary = json.loads(j.run(report.run_id)["summary"])
    assert summary["tokens"] == {"input": 300, "output": 60}
    assert summary["cost_usd"] == (0.75 if REPORTS_COST[preset] else None)
    if preset == "aider":  # aider committed its own edits; distpar kept those commits
        assert "feat: changes by the fake aider" in sh_git(repo, "log", "--format=%s", "main")


@pytest.mark.parametrize("preset", PRESETS)
def test_transient_failures_are_retried_and_permanent_ones_are_not(repo: Path, preset: str) -> None:
    """Rate limits (429, overloaded) go back to the coordinator, which slows the run down and starts the unit
    again; other transient failures (an early crash) are tried again by the worker; permanent ones never."""
    batches = [
        # a 429 on the first try; the second try starts from the batch's start commit (log.txt has one line)
        fake_batch("rate", extra=["@fake cost 0.25", "@fake tokens 100 20", "@fake append log.txt try",
                                  "@fake fail-once rate rate_limit", "@fake write done.txt ok"]),
        fake_batch("overload", extra=["@fake fail-once over overloaded", "@fake write over.txt ok"]),
        fake_batch("crash", extra=["@fake fail-once crash crash", "@fake write crash.txt ok"]),
        fake_batch("always429", extra=["@fake result rate_limit"]),
        fake_batch("turns", extra=["@fake result max_turns"]),
        fake_batch("crash-after-edit", extra=["@fake write partial.txt half", "@fake crash"]),
    ]
    report, runner = run_plan(repo, batches, workers=len(batches), agent=AgentConfig(preset))
    r = by_id(report.results)
    assert report.exit_code == ExitCode.BATCH_FAILED, report.errors
    # retried, then succeeded
    for bid, first in (("rate", "api_error"), ("overload", "api_error"), ("crash", "crash")):
        assert r[bid].status is UnitStatus.OK, (bid, r[bid].error)
        assert (r[bid].tries, r[bid].try_classes) == (2, (first, "success")), bid
    branch = runner.branch("rate")
    assert sh_git(repo, "show", f"{branch}:log.txt") == "try"
    saved = f"refs/distpar/{report.run_id}/saved/rate"  # the rate-limited dispatch's work
    assert "log.txt" in tree_files(repo, saved) and "done.txt" not in tree_files(repo, saved)
    # costs and tokens of both tries count
    rate = r["rate"].outcome
    assert rate is not None
    expected_tokens = {"claude": 200, "codex": 100, "gemini": 100, "aider": 100}[preset]
    assert rate.input_tokens == expected_tokens
    assert rate.cost_usd == {"claude": 0.5, "codex": None, "gemini": None, "aider": 0.25}[preset]
    # rate-limited every time: started 1 + agent_retries (2) times, then failed
    assert (r["always429"].status, r["always429"].try_classes) == (UnitStatus.FAILED, ("api_error",) * 3)
    # permanent: tried once
    assert (r["turns"].tries, r["turns"].try_classes) == (1, (MAX_TURNS_CLASS[preset],))
    assert (r["crash-after-edit"].tries, r["crash-after-edit"].try_classes) == (1, ("crash",))
    assert "partial.txt" in tree_files(repo, f"refs/distpar/{report.run_id}/saved/crash-after-edit")
    for bid in ("turns", "crash-after-edit", "always429"):
        assert r[bid].error, bid
    # the journal has each batch's final class and the classes of every try
    j = journal()
    classes = {row["unit_id"]: row["result_class"] for row in j.units(report.run_id)}
    assert classes == {"rate": "success", "overload": "success", "crash": "success", "always429": "api_error",
                       "turns": MAX_TURNS_CLASS[preset], "crash-after-edit": "crash"}
    tries = {e.unit_id: e.data["classes"] for e in j.events(report.run_id) if e.kind == "unit_tries"}
    assert tries == {"rate": ["api_error", "success"], "overload": ["api_error", "success"],
                     "crash": ["crash", "success"], "always429": ["api_error"] * 3}
    events = j.events(report.run_id)
    throttled = [e.unit_id or "" for e in events if e.kind == "unit_throttled"]
    # (an "overloaded" answer is a rate limit where the CLI says so: claude, gemini, aider; codex reports a 5xx)
    assert throttled.count("always429") == 2 and throttled.count("rate") == 1
    limits = [e.data["limit"] for e in events if e.kind == "throttled"]
    assert limits and min(limits) < len(batches)  # the whole run ran fewer agents at once


@pytest.mark.parametrize("preset", PRESETS)
def test_a_usage_limit_stops_new_units_and_leaves_the_run_resumable(repo: Path, preset: str) -> None:
    usage = "usage_limit_new" if preset == "claude" else "usage_limit"
    batches = [fake_batch("usage", extra=[f"@fake result {usage}"]), fake_batch("next", writes={"n.txt": "n"})]
    report, _ = run_plan(repo, batches, workers=1, agent=AgentConfig(preset))
    assert report.exit_code == ExitCode.BATCH_FAILED and report.stopped, report.summary()
    assert "usage limit" in report.stopped
    assert set(report.pending) == {"usage", "next"}  # nothing failed: resume runs them once the limit resets
    j = journal()
    assert [b["state"] for b in j.units(report.run_id)] == ["pending", "pending"]
    assert any(e.kind == "throttled" and e.data["stop"] for e in j.events(report.run_id))


def test_agent_retries_zero_means_one_try(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(1, extra=["@fake fail-once k rate_limit"])], agent_retries=0)
    assert report.results[0].status is UnitStatus.FAILED and report.results[0].try_classes == ("api_error",)


def test_codex_timeout_kills_the_group_and_is_not_retried(repo: Path, isolated_env: str) -> None:
    batch = fake_batch(1, extra=["@fake spawn-child", "@fake write half.txt x", "@fake hang"], timeout=1)
    report, _ = run_plan(repo, [batch], agent=AgentConfig("codex"))
    r = report.results[0]
    assert r.status is UnitStatus.TIMEOUT and r.try_classes == ("timeout",)
    assert processes_with_mark(isolated_env) == []
    assert "half.txt" in tree_files(repo, report.saved_refs[0])


def test_claude_runs_inside_a_claude_session_and_as_root(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake refuses CLAUDECODE (nested session) and, as root, bypass mode without IS_SANDBOX=1, as claude
    # does: the preset must unset the one and set the other.
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    report, _ = run_plan(repo, [fake_batch(1, writes={"x.txt": "x"})], agent=AgentConfig("claude"))
    assert report.exit_code == ExitCode.OK, report.results[0].error
    nested = subprocess.run([sys.executable, "-m", "distpar.testing.fake_agent", "-p", "--output-format", "json", "hi"],
                            capture_output=True, text=True, env={**os.environ, "CLAUDECODE": "1"})
    assert nested.returncode == 1 and "inside another Claude Code session" in nested.stderr


@pytest.mark.parametrize("preset", ["claude", "gemini"])
def test_stream_json_is_logged_live_and_parsed(repo: Path, preset: str) -> None:
    batch = fake_batch(1, writes={"s.txt": "s"}, extra=["@fake tokens 7 3"])
    report, _ = run_plan(repo, [batch], agent=AgentConfig(preset, stream=True))
    r = report.results[0]
    assert r.status is UnitStatus.OK and r.outcome and (r.outcome.input_tokens, r.outcome.output_tokens) == (7, 3)
    assert r.log_path
    out = Path(r.log_path).with_suffix(".out").read_text().splitlines()
    assert len(out) >= 2 and json.loads(out[0])["type"] in ("system", "init")


def test_missing_agent_executable_fails_once(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTPAR_AGENT_CODEX_BIN", "/nonexistent/codex")
    # The check before the run refuses this (tests/integration/test_cli.py); a host whose CLI went missing after it
    # is what the worker meets: skip the up-front check to reach the worker's handling.
    monkeypatch.setattr("distpar.coordinator.preflight.check_agents", lambda *a, **k: None)
    report, _ = run_plan(repo, [fake_batch(1)], agent=AgentConfig("codex"))
    r = report.results[0]
    assert r.status is UnitStatus.FAILED and r.tries == 1
    assert r.error == "agent executable not found: /nonexistent/codex"
    assert gitops.rev(repo, "main") == sh_git(repo, "rev-list", "--max-parents=0", "main")
