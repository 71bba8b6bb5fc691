"""The small git helpers the safety work relies on, against real git."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distpar.infra import gitops


def test_config_env_keeps_the_users_own_config_variables(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.mine")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "kept")
    env = gitops.hooks_env({}, hooks=False)
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert gitops.out(repo, "config", "user.mine", env=env) == "kept"
    assert gitops.out(repo, "config", "core.hooksPath", env=env) == os.devnull
    on = gitops.hooks_env({}, hooks=True)
    assert on == {gitops.HOOKS_VAR: "1"}
    # Every other git command distpar runs has the hooks turned off; one given hooks_env(..., True) does not.
    assert gitops.git(repo, "config", "core.hooksPath", env=on, check=False).stdout == ""
    assert gitops.out(repo, "config", "core.hooksPath") == os.devnull


def test_large_files_lists_only_new_content_over_the_limit(repo: Path) -> None:
    before = gitops.rev(repo, "HEAD")
    (repo / "big.bin").write_bytes(b"x" * 5000)
    (repo / "small.txt").write_text("s")
    (repo / "README.md").write_bytes(b"y" * 6000)
    gitops.commit_all(repo, "m", {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                                  "GIT_COMMITTER_EMAIL": "a@b"})
    assert sorted(gitops.large_files(repo, before, "HEAD", 4096)) == [("README.md", 6000), ("big.bin", 5000)]
    assert gitops.large_files(repo, before, "HEAD", 10_000) == []


def test_busy_with_nothing_under_way(repo: Path) -> None:
    assert gitops.busy_with(repo, "main") is None
