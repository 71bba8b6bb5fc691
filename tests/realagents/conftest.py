"""The realagents tier: the real agent CLIs (installed by scripts/install-agents.sh into a cache outside the
repository) against the stand-in model servers of ``standins.py``, on 127.0.0.1, with no key and no network.

Where the cache is absent the tier is skipped with the reason, except in CI (``CI=true``), where a missing CLI
fails the tier. The report header names the version of each CLI found.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.realagents.clis import AGENTS_DIR, CLIS, MODELS, _quiet_env, require
from tests.realagents.standins import StandIn


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as s:
        yield s


@dataclass
class Agent:
    """A real CLI wired to a stand-in: the environment ``distpar run`` is started with, and the model flag."""

    name: str
    path: Path
    env: dict[str, str]
    model: str | None

    def run_args(self) -> list[str]:
        return ["--agent", self.name, *(["--model", self.model] if self.model else [])]


@pytest.fixture
def scratch_home() -> Iterator[Path]:
    """A directory outside /tmp for configuration the CLIs refuse under a temporary directory (codex's home)."""
    path = AGENTS_DIR / "homes" / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wire(name: str, standin: StandIn, home: Path, scratch: Path) -> Agent:
    """The environment that points CLI ``name`` at ``standin``; its configuration written under ``home``."""
    path = require(name)
    env = {**_quiet_env(), f"DISTPAR_AGENT_{name.upper()}_BIN": str(path), "DISTPAR_RETRY_BASE_SECONDS": "0.05"}
    if name == "claude":
        env.update(ANTHROPIC_BASE_URL=standin.url, ANTHROPIC_API_KEY="sk-ant-standin-key",
                   CLAUDE_CODE_MAX_RETRIES="0", API_TIMEOUT_MS="20000")
    elif name == "codex":
        codex_home = scratch / "codex"
        codex_home.mkdir()
        (codex_home / "config.toml").write_text(
            'model_provider = "standin"\nmodel = "gpt-standin"\n'
            "[model_providers.standin]\n"
            f'name = "standin"\nbase_url = "{standin.url}/v1"\nenv_key = "STANDIN_API_KEY"\nwire_api = "responses"\n'
            "request_max_retries = 0\nstream_max_retries = 0\nstream_idle_timeout_ms = 20000\n")
        env.update(CODEX_HOME=str(codex_home), STANDIN_API_KEY="standin-key")
    elif name == "gemini":
        (home / ".gemini").mkdir(exist_ok=True)
        (home / ".gemini" / "settings.json").write_text(json.dumps(
            {"security": {"auth": {"selectedType": "gemini-api-key"}}, "general": {"maxAttempts": 1}}))
        env.update(GOOGLE_GEMINI_BASE_URL=standin.url, GEMINI_API_KEY="standin-gemini-key")
    elif name == "aider":
        # aider fetches litellm's price table from the network unless its cache is fresh: an empty one is, and
        # litellm's bundled table then prices the model
        (home / ".aider" / "caches").mkdir(parents=True, exist_ok=True)
        (home / ".aider" / "caches" / "model_prices_and_context_window.json").write_text("{}")
        # litellm would fetch its price table from the network first; its bundled copy is the same
        env.update(OPENAI_API_BASE=standin.url + "/v1", OPENAI_API_KEY="sk-standin-key",
                   LITELLM_LOCAL_MODEL_COST_MAP="True")
    return Agent(name, path, env, MODELS[name])


def git_identity() -> None:
    """A git identity, as a user has one: without it aider writes "Your Name" into the repository's config, and
    parallel aiders in worktrees of one repository race on .git/config.lock."""
    with open(os.environ["GIT_CONFIG_GLOBAL"], "a") as f:
        f.write("[user]\n\tname = distpar tests\n\temail = tests@distpar.invalid\n")


@pytest.fixture
def every_agent(scratch_home: Path) -> Iterator[dict[str, tuple[Agent, StandIn]]]:
    """Every real CLI, each wired to a stand-in of its own (for tests that run them side by side, each
    ``distpar run`` given its agent's variables)."""
    git_identity()
    with contextlib.ExitStack() as stack:
        out = {}
        for name in CLIS:
            s = stack.enter_context(StandIn())
            (scratch_home / name).mkdir()
            out[name] = (wire(name, s, Path(os.environ["HOME"]), scratch_home / name), s)
        yield out


@pytest.fixture(params=CLIS)
def agent(request: pytest.FixtureRequest, standin: StandIn, scratch_home: Path,
          monkeypatch: pytest.MonkeyPatch) -> Agent:
    """Each real CLI in turn, wired to a fresh stand-in; its variables set in this process's environment."""
    a = wire(request.param, standin, Path(os.environ["HOME"]), scratch_home)
    git_identity()
    for k, v in a.env.items():
        monkeypatch.setenv(k, v)
    return a


@pytest.fixture
def wired(standin: StandIn, scratch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Agent]:
    """``wired(name)``: one real CLI wired to the test's stand-in, its variables set in this process."""
    def make(name: str) -> Agent:
        a = wire(name, standin, Path(os.environ["HOME"]), scratch_home)
        git_identity()
        for k, v in a.env.items():
            monkeypatch.setenv(k, v)
        return a

    return make
