"""What agents print reaches ``--json`` (and every observer) as ``agent_output`` events while they run: masked,
in order, bounded in length and rate; the log files keep everything."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from distpar.infra.capture import LINE_CHARS, LINES_PER_SECOND
from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_distpar

pytestmark = pytest.mark.integration


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()[:-1]]  # the last line is the run's summary


def test_output_lines_are_events_in_order_and_masked(repo: Path) -> None:
    key = "sk-test-output-0123456789"
    plan = write_plan(repo.parent / "p.md", [fake_batch("talk", writes={"t.txt": "1"}, extra=[
        "@fake say 'first line'", "@fake sleep 0.3", "@fake print-env SECRET_FOR_OUTPUT",
        "@fake sh 'echo to-stderr >&2'", "@fake say " + "x" * (LINE_CHARS + 500), "@fake say 'last line'"])])
    res = run_distpar("run", str(plan), "--agent", "fake", "--json", "--forward-env", "SECRET_FOR_OUTPUT",
                      cwd=repo, env={"SECRET_FOR_OUTPUT": key})
    assert res.returncode == 0, res.stdout + res.stderr
    assert key not in res.stdout + res.stderr
    seen = events(res.stdout)
    out = [e for e in seen if e["event"] == "agent_output"]
    assert all(e["unit"] == "talk" and e["worker"] == 0 and e["attempt"] == 1 and e["node"] and e["at"] > 0
               for e in out)
    lines = [(e["fd"], e["line"]) for e in out]
    said = [line for fd, line in lines if fd == "out" and not line.startswith("{")]  # not the JSON result
    assert said[:2] == ["first line", "SECRET_FOR_OUTPUT=***"] and said[-1] == "last line"
    assert ("err", "SECRET_FOR_OUTPUT=***") in lines and ("err", "to-stderr") in lines
    long = [e for e in out if e.get("cut")]
    assert len(long) == 1 and long[0]["line"].startswith("x" * LINE_CHARS + " [... cut at ")
    # As they happen: between the unit's start and its end, in the order printed.
    kinds = [e["event"] for e in seen]
    first, last = kinds.index("agent_output"), len(kinds) - 1 - kinds[::-1].index("agent_output")
    assert kinds.index("unit_started") < first and last < kinds.index("unit_ended")
    assert said.index("first line") < said.index("last line")
    # The log file is as it always was: the long line whole, the secret masked.
    log = (Path(os.environ["DISTPAR_HOME"]) / "runs" / run_id_of_events(seen) / "logs" / "talk.log").read_text()
    assert "x" * (LINE_CHARS + 500) in log and "SECRET_FOR_OUTPUT=***" in log and key not in log
    assert log.count("first line") == 1  # not doubled by the events (the local worker writes this very file)


def run_id_of_events(seen: list[dict[str, Any]]) -> str:
    return str(next(e["run_id"] for e in seen if e["event"] == "run_started"))


def test_huge_output_is_rate_limited_and_the_log_is_complete(repo: Path) -> None:
    n = 200_000
    plan = write_plan(repo.parent / "p.md", [fake_batch("loud", writes={"l.txt": "1"}, extra=[
        f"@fake sh 'seq 1 {n}'", "@fake say 'after the flood'"])])
    t0 = time.time()
    res = run_distpar("run", str(plan), "--agent", "fake", "--json", cwd=repo)
    took = time.time() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    out = [e for e in events(res.stdout) if e["event"] == "agent_output"]
    skipped = [e for e in out if "skipped" in e]
    # A burst: the first LINES_PER_SECOND lines of each second, the rest counted in one marker line.
    assert LINES_PER_SECOND <= len(out) <= (took + 1) * (LINES_PER_SECOND + 2)
    assert skipped and skipped[0]["line"].startswith(f"--- distpar: {skipped[0]['skipped']} line(s) of stdout")
    sent = [e for e in out if "skipped" not in e]
    assert [e["line"] for e in sent[:LINES_PER_SECOND]] == [str(i) for i in range(1, LINES_PER_SECOND + 1)]
    assert len(sent) + sum(e["skipped"] for e in skipped) >= n + 1  # every line: sent or counted
    assert took < 60
    log = (Path(os.environ["DISTPAR_HOME"]) / "runs" / run_id_of_events(events(res.stdout)) / "logs"
           / "loud.log").read_text()
    nums = [line for line in log.splitlines() if line.isdigit()]
    assert nums == [str(i) for i in range(1, n + 1)] and "after the flood" in log
