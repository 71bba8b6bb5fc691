"""distpar's bundled fake agent (``distpar.testing.fake_agent``) as a preset: the claude dialect, run with this
Python, so demos and tests need no API key and no installed CLI."""

from __future__ import annotations

import sys

from distpar.agents.base import Preset
from distpar.agents.claude import claude_args, claude_env, parse_claude

FAKE = Preset(
    "fake", "distpar-fake-agent",
    "distpar's bundled fake agent (claude-like CLI, for demos and tests; needs no API key)",
    claude_args, parse_claude,
    supports=frozenset({"model", "max_turns", "max_budget_usd", "stream", "resume"}),
    reports_cost=True, env=claude_env, unset=("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"),
    command=(sys.executable, "-m", "distpar.testing.fake_agent"), prompt_stdin=True,
)
