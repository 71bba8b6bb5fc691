"""Agent tests: presets pointed at the bundled fake agent (``$DISTPAR_AGENT_<PRESET>_BIN``), tiny retry backoff."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator

import pytest

PRESETS = ("claude", "codex", "gemini", "aider")
AIDER_TEST_KEY = "fake-deepseek-key"


def fake_command(preset: str) -> str:
    return shlex.join([sys.executable, "-m", "distpar.testing.fake_agent", "--emulate", preset])


@pytest.fixture(autouse=True)
def fake_clis(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Every preset runs the fake agent emulating its CLI; retries wait milliseconds, not seconds."""
    for p in PRESETS:
        monkeypatch.setenv(f"DISTPAR_AGENT_{p.upper()}_BIN", fake_command(p))
    monkeypatch.setenv("DISTPAR_RETRY_BASE_SECONDS", "0.01")
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "CODEX_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
                "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY", "XAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    # aider without a model and without any key would start an interactive OpenRouter login (the fake emulates
    # it; distpar refuses to start it): the runs here give it a key.
    monkeypatch.setenv("DEEPSEEK_API_KEY", AIDER_TEST_KEY)
    yield fake_command
