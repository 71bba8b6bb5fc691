"""Resuming an interrupted unit somewhere else: its saved work travels with it, and its agent session is
continued only on the node that holds it (elsewhere a fresh session goes on from the saved work, told so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distpar.core.model import AgentConfig, Identity, Source, UnitReply, UnitSpec, WorkerSettings
from distpar.infra import gitops
from distpar.infra.transfer import Transfer
from distpar.testing.builders import sh_git
from distpar.worker.common import node_name
from distpar.worker.retry import RESUME_PREFIX
from distpar.worker.unit import run_unit

pytestmark = pytest.mark.integration


def saved_work(repo: Path) -> str:
    """A commit of unfinished work on a side ref, as distpar keeps it for an interrupted unit."""
    start = gitops.rev(repo, "main")
    (repo / "half.txt").write_text("half done\n")
    snap = gitops.snapshot(repo, "distpar: unfinished work of batch 1: interrupted", Identity().env())
    assert snap is not None
    (repo / "half.txt").unlink()
    gitops.update_ref(repo, "refs/distpar/r1/saved/1", snap)
    assert gitops.rev(repo, "main") == start and not gitops.dirty_files(repo)
    return snap


def run_for(repo: Path, tmp_path: Path, source: Source, restore: str | None, node: str | None) -> UnitReply:
    settings = WorkerSettings("r1", str(tmp_path / "ws"), str(tmp_path / "logs"),
                              return_bundle=source.kind == "bundle")
    spec = UnitSpec("1", "batch 1", "@fake append half.txt more", AgentConfig("fake"), 60, worker=0, dispatch=1,
                    branch="distpar/r1/b/1", base=gitops.rev(repo, "main"), source=source, session="sess-1",
                    restore=restore, node=node)
    return run_unit(settings, spec)


def invocations(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_saved_work_travels_in_the_bundle_and_a_session_elsewhere_is_not_resumed(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = saved_work(repo)
    transfer = Transfer(repo, "r1", tmp_path / "run", gitops.rev(repo, "main"), remote=True, repo_url=None)
    source = transfer.source(gitops.rev(repo, "main"), "1-1", extra=("refs/distpar/r1/saved/1",))
    assert source.increments, "the saved work needs an increment beyond the start bundle"
    heads = sh_git(repo, "bundle", "list-heads", source.increments[0])
    assert snap in heads
    monkeypatch.setenv("FAKE_AGENT_LOG", str(tmp_path / "agent.jsonl"))
    result = run_for(repo, tmp_path, source, snap, node="some-other-node")
    r = result.result
    assert r.status.ok, r.error
    # The agent found its saved work and added to it, in a fresh session (its old one lives elsewhere).
    ws = Path(tmp_path / "ws")
    assert sh_git(ws, "show", "HEAD:half.txt") == "half done\nmore"
    argv = invocations(tmp_path / "agent.jsonl")[0]["argv"]
    assert not any(str(a).startswith("--resume") for a in argv)  # type: ignore[union-attr]
    log = Path(r.log_path or "").read_text()
    assert "the interrupted session lives on some-other-node" in log
    argv_text = " ".join(str(a) for a in argv)  # type: ignore[union-attr]
    assert "the work it had done is in the working tree" in argv_text


def test_a_session_is_resumed_on_the_node_that_holds_it(repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    snap = saved_work(repo)
    monkeypatch.setenv("FAKE_AGENT_LOG", str(tmp_path / "agent.jsonl"))
    result = run_for(repo, tmp_path, Source("worktree", str(repo)), snap, node=node_name())
    assert result.result.status.ok, result.result.error
    argv = [str(a) for a in invocations(tmp_path / "agent.jsonl")[0]["argv"]]  # type: ignore[union-attr]
    assert "--resume=sess-1" in argv
    assert any(a.startswith(RESUME_PREFIX[:40]) for a in argv)
    gitops.workspace_remove(repo, tmp_path / "ws")


def test_nothing_saved_means_the_agent_is_not_told_it_is_in_the_tree(repo: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_LOG", str(tmp_path / "agent.jsonl"))
    missing = "0" * 40
    result = run_for(repo, tmp_path, Source("worktree", str(repo)), missing, node=None)
    assert result.result.status.ok
    argv = " ".join(str(a) for a in invocations(tmp_path / "agent.jsonl")[0]["argv"])  # type: ignore[union-attr]
    assert "the work it had done is in the working tree" not in argv and "before it changed any file" in argv
    gitops.workspace_remove(repo, tmp_path / "ws")
