"""The error matrix through ``distpar run`` for each real CLI: the stand-in answers 400, 401, 403, 429, 500,
529, drops the connection, or answers slowly; distpar classes each right and retries only the transient ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distpar.errors import ExitCode
from distpar.journal import Journal
from distpar.testing import fake_batch, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.realagents.conftest import Agent

pytestmark = pytest.mark.realagents

PERMANENT = {"400": "error", "401": "error", "403": "error"}
TRANSIENT = {"429": "api_error", "500": "api_error", "529": "api_error"}
# A dropped connection: claude and gemini report an API error, codex a stream error, aider a litellm
# connection error; all of them transient.
DROP = {"claude": "api_error", "codex": "api_error", "gemini": "api_error", "aider": "api_error"}


def test_error_matrix(repo: Path, agent: Agent) -> None:
    cases: dict[str, str] = {**PERMANENT, **TRANSIENT}
    batches = [fake_batch(f"s{code}", writes={f"f{code}.txt": code}, extra=[f"@standin status {code}"])
               for code in cases]
    batches.append(fake_batch("drop", writes={"drop.txt": "x"}, extra=["@standin drop"]))
    batches.append(fake_batch("slow", writes={"slow.txt": "slow"}, extra=["@standin delay 3"]))
    plan = write_plan(repo.parent / "plan.md", batches)
    args = agent.run_args()
    if agent.name == "gemini":
        args += ["--model", "gemini-2.5-flash"]  # no router call before the main one (it retries on its own)
    # one stream per batch: a failed batch skips the rest of its stream
    out = run_distpar("run", str(plan), "--workers", str(len(batches)), *args, "--agent-retries", "1",
                      "--timeout", "400", cwd=repo, timeout=900)
    assert out.returncode == ExitCode.BATCH_FAILED, out.stdout[-3000:] + out.stderr[-3000:]
    journal = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    run_id = run_id_of(out.stdout)
    rows = {r["batch_id"]: r for r in journal.batches(run_id)}
    tries = {e.batch_id: len(e.data["classes"]) for e in journal.events(run_id) if e.kind == "batch_tries"}
    got = {bid: (r["result_class"], tries.get(bid, 1)) for bid, r in rows.items()}
    want = {f"s{code}": (cls, 1) for code, cls in PERMANENT.items()}
    want |= {f"s{code}": (cls, 2) for code, cls in TRANSIENT.items()}
    want |= {"drop": (DROP[agent.name], 2), "slow": ("success", 1)}
    assert got == want, {b: rows[b]["error"][:300] for b in rows if got.get(b) != want.get(b)}
    assert "slow.txt" in tree_files(repo, rows["slow"]["commit_oid"])  # on its stream's branch (the run failed)
    for code in cases:
        if not (agent.name == "codex" and code in TRANSIENT):  # codex words its 5xx as "high demand"
            assert code in rows[f"s{code}"]["error"], rows[f"s{code}"]["error"]


def test_codex_without_a_reachable_server_is_stopped_as_stalled(repo: Path, agent: Agent) -> None:
    if agent.name != "codex":
        pytest.skip("codex is the CLI that waits for ever (\"Reconnecting...\") when its server is gone")
    config = Path(os.environ["CODEX_HOME"]) / "config.toml"
    text = config.read_text()
    config.write_text(text.replace(text.split('base_url = "', 1)[1].split('"', 1)[0], "http://127.0.0.1:9/v1"))
    plan = write_plan(repo.parent / "plan.md", [fake_batch(1, writes={"x.txt": "x"})])
    out = run_distpar("run", str(plan), *agent.run_args(), "--agent-retries", "1", "--stall-timeout", "8",
                      "--timeout", "300", cwd=repo, timeout=300)
    assert out.returncode == ExitCode.BATCH_FAILED, out.stdout[-3000:] + out.stderr[-3000:]
    journal = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    run_id = run_id_of(out.stdout)
    [row] = journal.batches(run_id)
    assert row["result_class"] == "stalled" and "Reconnecting" in row["error"], row["error"]
    tries = [e.data["classes"] for e in journal.events(run_id) if e.kind == "batch_tries"]
    assert tries == [["stalled", "stalled"]]
