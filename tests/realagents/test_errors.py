"""The error matrix through ``distpar run`` for each real CLI: the stand-in answers 400, 401, 403, 429, 500,
529, drops the connection, or answers slowly; distpar classes each right and retries only the transient ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.core.errors import ExitCode
from distpar.testing.builders import fake_batch, make_repo, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.realagents.conftest import Agent
from tests.realagents.standins import StandIn

pytestmark = pytest.mark.realagents

PERMANENT = {"400": "error", "401": "error", "403": "error"}
TRANSIENT = {"429": "api_error", "500": "api_error", "529": "api_error"}
# A dropped connection: claude and gemini report an API error, codex a stream error, aider a litellm
# connection error; all of them transient.
DROP = {"claude": "api_error", "codex": "api_error", "gemini": "api_error", "aider": "api_error"}


@pytest.mark.timeout(600)  # aider retries each failure itself for about two minutes before it gives up
def test_error_matrix(tmp_path: Path, every_agent: dict[str, tuple[Agent, StandIn]]) -> None:
    """The four CLIs side by side (each its own repository, stand-in and DISTPAR_HOME), so the tier's time is
    that of the slowest (aider), not the sum."""
    cases: dict[str, str] = {**PERMANENT, **TRANSIENT}
    batches = [fake_batch(f"s{code}", writes={f"f{code}.txt": code}, extra=[f"@standin status {code}"])
               for code in cases]
    batches.append(fake_batch("drop", writes={"drop.txt": "x"}, extra=["@standin drop"]))
    batches.append(fake_batch("slow", writes={"slow.txt": "slow"}, extra=["@standin delay 3"]))
    procs = {}
    for name, (agent, _) in every_agent.items():
        repo = make_repo(tmp_path / name / "repo")
        plan = write_plan(tmp_path / name / "plan.md", batches)
        args = agent.run_args()
        if name == "gemini":
            args += ["--model", "gemini-2.5-flash"]  # no router call before the main one (it retries on its own)
        env = {**os.environ, **agent.env, "DISTPAR_HOME": str(tmp_path / name / "home")}
        # a worker per batch: a failed batch holds up no other
        procs[name] = (repo, env, subprocess.Popen(
            [sys.executable, "-m", "distpar", "run", str(plan), "--workers", str(len(batches)), *args,
             "--agent-retries", "1", "--timeout", "400"], cwd=repo, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    failures = {}
    for name, (repo, env, proc) in procs.items():
        try:
            output, errors = proc.communicate(timeout=560)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, errors = proc.communicate()
        failures[name] = _check(name, repo, Path(env["DISTPAR_HOME"]), proc.returncode, output, errors, cases)
    assert not {k: v for k, v in failures.items() if v}


def _check(name: str, repo: Path, home: Path, code: int | None, output: str, errors: str,
           cases: dict[str, str]) -> str:
    if code != ExitCode.BATCH_FAILED:
        return f"exit {code}: {output[-2000:]} {errors[-2000:]}"
    journal = Journal(home / "journal.db")
    run_id = run_id_of(output)
    rows = {r["unit_id"]: r for r in journal.units(run_id)}
    tries = {e.unit_id: len(e.data["classes"]) for e in journal.events(run_id) if e.kind == "unit_tries"}
    got = {bid: (r["result_class"], tries.get(bid, 1)) for bid, r in rows.items()}
    want = {f"s{c}": (cls, 1) for c, cls in PERMANENT.items()}
    want |= {f"s{c}": (cls, 2) for c, cls in TRANSIENT.items()}
    want |= {"drop": (DROP[name], 2), "slow": ("success", 1)}
    if got != want:
        diff = {b: (got.get(b), want.get(b), rows[b]["error"][:300]) for b in rows if got.get(b) != want.get(b)}
        return f"{run_id}: {got} != {want}: {diff}"
    if "slow.txt" not in tree_files(repo, rows["slow"]["commit_oid"]):  # on its unit's branch (the run failed)
        return "slow.txt missing"
    for c in cases:
        if not (name == "codex" and c in TRANSIENT) and c not in rows[f"s{c}"]["error"]:  # codex: "high demand"
            return f"status {c} not in the error: {rows[f's{c}']['error']}"
    return ""


def test_codex_without_a_reachable_server_is_stopped_as_stalled(repo: Path, wired: Callable[[str], Agent]) -> None:
    # codex prints "Reconnecting..." a few times and then waits for ever when its model server is gone
    agent = wired("codex")
    config = Path(os.environ["CODEX_HOME"]) / "config.toml"
    text = config.read_text()
    config.write_text(text.replace(text.split('base_url = "', 1)[1].split('"', 1)[0], "http://127.0.0.1:9/v1"))
    plan = write_plan(repo.parent / "plan.md", [fake_batch(1, writes={"x.txt": "x"})])
    out = run_distpar("run", str(plan), *agent.run_args(), "--agent-retries", "1", "--stall-timeout", "8",
                      "--timeout", "300", cwd=repo, timeout=300)
    assert out.returncode == ExitCode.BATCH_FAILED, out.stdout[-3000:] + out.stderr[-3000:]
    journal = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    run_id = run_id_of(out.stdout)
    [row] = journal.units(run_id)
    assert row["result_class"] == "stalled" and "Reconnecting" in row["error"], row["error"]
    tries = [e.data["classes"] for e in journal.events(run_id) if e.kind == "unit_tries"]
    assert tries == [["stalled", "stalled"]]
