"""Agent presets and templates: a batch -> the argv and environment of one headless agent invocation, and the
agent's output -> an ``AgentOutcome``.

One module per noun: ``base`` (the Preset type, the invocation context, classification of results), one module per
CLI dialect (``claude``, ``codex``, ``gemini``, ``aider``, ``template``, ``fake``), ``registry`` (the installed
presets, entry points, ``agent_config``), ``invocation`` (one agent run), ``probe`` (``distpar agents``) and
``suggest`` (``distpar plan --suggest-deps``). The names users import (``from distpar.agents import Preset``,
``CLAUDE``, ...) are re-exported here.

The prompt is always one argv element (or a file): nothing here ever goes through a shell. Each preset's argv
follows its CLI's documentation (cited next to its builder); ``tests/agents/test_presets.py`` checks them.

Which program runs a preset: ``AgentConfig.executable`` if set, else ``$DISTPAR_AGENT_<PRESET>_BIN`` on the
machine that runs the agent, else the preset's own command (``claude``, ``codex``, ``gemini``, ``aider``). Both
overrides are split like a shell would (no shell runs them), so ``python -m distpar.testing.fake_agent --emulate codex``
points the codex preset at the bundled fake agent.
"""

from __future__ import annotations

from distpar.agents.aider import AIDER, AIDER_KEY_VARS, parse_aider
from distpar.agents.base import (
    ARGV_PROMPT_MAX,
    BIN_VAR,
    GUARD_VAR,
    GUARD_VARS,
    TRANSIENT,
    USAGE_LIMIT,
    Context,
    Invocation,
    Parser,
    Preset,
    classify_status,
    classify_text,
    strip_ansi,
)
from distpar.agents.claude import CLAUDE, parse_claude, subagent_how
from distpar.agents.codex import CODEX, parse_codex
from distpar.agents.fake import FAKE
from distpar.agents.gemini import GEMINI, parse_gemini
from distpar.agents.invocation import invocation, stalled
from distpar.agents.probe import VERSION_TIMEOUT, Probe, probe, version_line
from distpar.agents.registry import (
    BUILTIN_PRESETS,
    ENTRY_POINT_GROUP,
    KEY_VARS,
    PRESETS,
    agent_config,
    can_resume,
    check_plan_agents,
    command,
    custom_agent,
    load_plugins,
    preset_names,
    preset_of,
    secret_values,
    unsupported,
)
from distpar.agents.template import PLACEHOLDERS, TEMPLATE, TemplatePreset, parse_exit_code, validate_template

__all__ = [
    "AIDER", "AIDER_KEY_VARS", "ARGV_PROMPT_MAX", "BIN_VAR", "BUILTIN_PRESETS", "CLAUDE", "CODEX",
    "ENTRY_POINT_GROUP", "FAKE", "GEMINI", "GUARD_VAR", "GUARD_VARS", "KEY_VARS", "PLACEHOLDERS", "PRESETS",
    "TEMPLATE", "TRANSIENT", "USAGE_LIMIT", "VERSION_TIMEOUT", "Context", "Invocation", "Parser", "Preset", "Probe",
    "TemplatePreset", "agent_config", "can_resume", "check_plan_agents", "classify_status", "classify_text",
    "command", "custom_agent", "invocation", "load_plugins", "parse_aider", "parse_claude", "parse_codex",
    "parse_exit_code", "parse_gemini", "preset_names", "preset_of", "probe", "secret_values", "stalled",
    "strip_ansi", "subagent_how", "unsupported", "validate_template", "version_line",
]
