"""No secret value is ever written by distpar: an agent that prints its API key and a forwarded token leaves
no trace of either under $DISTPAR_HOME (logs, journal, events), in the report, or in the summary JSON."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_distpar

pytestmark = pytest.mark.integration

API_KEY = "sk-ant-api03-SECRETVALUE-0123456789"
TOKEN = "ghp_TOKENVALUE_abcdef987654"


@pytest.mark.parametrize(("preset", "key_var"), [("claude", "ANTHROPIC_API_KEY"), ("codex", "CODEX_API_KEY")])
def test_printed_secrets_are_masked_everywhere(repo: Path, preset: str, key_var: str) -> None:
    leak = [f"@fake print-env {key_var}", "@fake print-env DEPLOY_TOKEN"]
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"ok.txt": "ok"}, extra=leak),
        # fails (its message carries the values into the error, the log tail and the events), then is retried
        fake_batch(2, extra=[*leak, "@fake fail-once leak rate_limit", "@fake write two.txt x"]),
        fake_batch(3, extra=[*leak, "@fake fail 3 'giving up'"]),
    ])
    env = {key_var: API_KEY, "DEPLOY_TOKEN": TOKEN}
    res = run_distpar("run", str(plan), "--agent", preset, "--workers", "2", "--forward-env", "DEPLOY_TOKEN",
                      "--json", cwd=repo, env=env)
    assert res.returncode == 1, res.stderr
    home = Path(os.environ["DISTPAR_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "journal.db" for p in files) and any(p.suffix == ".log" for p in files)
    for p in files:
        data = p.read_bytes()
        assert API_KEY.encode() not in data and TOKEN.encode() not in data, p
    for text in (res.stdout, res.stderr):
        assert API_KEY not in text and TOKEN not in text
    # the agent really printed them: the logs show the mask where the values were
    logs = "".join(p.read_text() for p in home.glob("runs/*/logs/*.log"))
    assert f"{key_var}=***" in logs and "DEPLOY_TOKEN=***" in logs
    assert "DEPLOY_TOKEN=***" in res.stdout  # the failed batch's error, masked, in the JSON summary and events
