"""Agent presets and templates: a batch -> the argv and environment of one headless agent invocation, and the
agent's output -> an ``AgentOutcome``.

The prompt is always one argv element (or a file): nothing here ever goes through a shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpar.errors import PlanError, UsageError
from distpar.model import AgentConfig, AgentOutcome
from distpar.plan import Plan

GUARD_VAR = "DISTPAR_SUBPROCESS"
PLACEHOLDERS = ("prompt", "prompt_file", "batch_id", "workdir", "run_id", "stream")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True, slots=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Context:
    prompt: str
    prompt_file: Path
    batch_id: str
    workdir: Path
    run_id: str
    stream: int


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    executable: str
    description: str
    build: Callable[[AgentConfig, Context], list[str]]
    parse: Callable[[str, int | None], AgentOutcome]
    env: Callable[[], dict[str, str]] = dict
    unset: tuple[str, ...] = ()


def _claude_argv(cfg: AgentConfig, ctx: Context) -> list[str]:
    # Claude Code headless mode: `claude -p PROMPT --output-format json`; bypassPermissions lets it edit and
    # run commands without asking (there is no --headless flag). The prompt is passed after `--` so a prompt
    # that starts with '-' is never read as an option.
    argv = ["claude", "-p", "--output-format", "json", "--permission-mode", "bypassPermissions"]
    if cfg.model:
        argv += ["--model", cfg.model]
    if cfg.max_turns:
        argv += ["--max-turns", str(cfg.max_turns)]
    if cfg.max_budget_usd:
        argv += ["--max-budget-usd", str(cfg.max_budget_usd)]
    return [*argv, *cfg.extra_args, "--", ctx.prompt]


def _claude_env() -> dict[str, str]:
    # bypassPermissions refuses to run as root unless told it is inside a sandbox.
    return {"IS_SANDBOX": "1"} if hasattr(os, "geteuid") and os.geteuid() == 0 else {}


def _fake_argv(cfg: AgentConfig, ctx: Context) -> list[str]:
    argv = [sys.executable, "-m", "distpar.fake_agent", "-p", ctx.prompt, "--output-format", "json"]
    if cfg.model:
        argv += ["--model", cfg.model]
    if cfg.max_turns:
        argv += ["--max-turns", str(cfg.max_turns)]
    if cfg.max_budget_usd:
        argv += ["--max-budget-usd", str(cfg.max_budget_usd)]
    return [*argv, *cfg.extra_args]


def parse_claude(stdout: str, exit_code: int | None) -> AgentOutcome:
    """Classify a Claude Code ``--output-format json`` result (the exit code alone is not reliable)."""
    data = last_json_object(stdout)
    if data is None:
        return AgentOutcome(
            "crash", False, message=f"no JSON result on stdout (exit code {exit_code})", transient=True
        )
    usage = data.get("usage") or {}
    model = next(iter(data.get("modelUsage") or {}), None)
    subtype = str(data.get("subtype", ""))
    text = str(data.get("result", "") or data.get("error", "") or "")
    is_error = bool(data.get("is_error")) or subtype not in ("", "success") or (exit_code not in (0, None))
    cls, transient = "success", False
    if subtype == "error_max_turns":
        cls = "max_turns"
    elif "budget" in subtype:
        cls = "budget_exceeded"
    elif is_error:
        low = text.lower()
        if "usage limit" in low:
            cls = "usage_limit"
        elif re.search(r"\b(429|500|502|503|504|529)\b|rate.?limit|overloaded|api error", low):
            cls, transient = "api_error", True
        else:
            cls = "error"
    return AgentOutcome(
        result_class=cls,
        ok=cls == "success",
        message=text[-2000:],
        cost_usd=_num(data.get("total_cost_usd", data.get("cost_usd"))),
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_creation_tokens=_int(usage.get("cache_creation_input_tokens")),
        turns=_int(data.get("num_turns")),
        duration_api_ms=_int(data.get("duration_api_ms")),
        session_id=data.get("session_id"),
        model=model,
        transient=transient,
    )


def parse_exit_code(stdout: str, exit_code: int | None) -> AgentOutcome:
    """For templates: a claude-shaped JSON result if there is one, else the exit code."""
    if last_json_object(stdout) is not None:
        return parse_claude(stdout, exit_code)
    if exit_code == 0:
        return AgentOutcome("success", True)
    return AgentOutcome("error", False, message=f"exit code {exit_code}")


def last_json_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
        return data if isinstance(data, dict) else None
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


PRESETS: dict[str, Preset] = {
    "claude": Preset(
        "claude",
        "claude",
        "Claude Code, headless (claude -p, JSON result)",
        _claude_argv,
        parse_claude,
        env=_claude_env,
        unset=("CLAUDECODE",),
    ),
    "fake": Preset(
        "fake",
        sys.executable,
        "distpar's bundled fake agent (claude-like CLI, for demos and tests; needs no API key)",
        _fake_argv,
        parse_claude,
    ),
}


def agent_config(value: str | None, base: AgentConfig) -> AgentConfig:
    """A plan's or a flag's agent value (preset name or command template) on top of the run's options."""
    if not value:
        return base
    if value in PRESETS:
        return AgentConfig(preset=value, template=None, model=base.model, max_turns=base.max_turns,
                           max_budget_usd=base.max_budget_usd, extra_args=base.extra_args)
    if " " in value.strip() or "{" in value:
        validate_template(value)
        return AgentConfig(preset="template", template=value, model=base.model, max_turns=base.max_turns,
                           max_budget_usd=base.max_budget_usd)
    raise UsageError(
        f"unknown agent {value!r}: use a preset ({', '.join(PRESETS)}) or a command template such as "
        "'mytool --prompt-file {prompt_file}'"
    )


def check_plan_agents(plan: Plan, base: AgentConfig) -> None:
    """Refuse a plan whose per-batch ``agent`` is neither a preset nor a valid template, pointing at it."""
    for i, b in enumerate(plan.batches):
        if b.agent:
            try:
                agent_config(b.agent, base)
            except UsageError as exc:
                raise PlanError(f"batches[{i}].agent: {exc.message}", where=f"{plan.source}:{b.line}") from None


def validate_template(template: str) -> list[str]:
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise UsageError(f"agent command template cannot be split into arguments: {exc}") from None
    if not argv:
        raise UsageError("agent command template is empty")
    unknown = {m for m in re.findall(r"\{(\w+)\}", template) if m not in PLACEHOLDERS}
    if unknown:
        raise UsageError(
            f"agent command template has unknown placeholder(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
        )
    return argv


def invocation(cfg: AgentConfig, ctx: Context, base_env: Mapping[str, str], extra_env: Mapping[str, str]) -> tuple[
    Invocation, Callable[[str, int | None], AgentOutcome]
]:
    """The argv, environment and result parser for one agent run."""
    if cfg.preset == "template":
        assert cfg.template is not None
        values = {
            "prompt": ctx.prompt,
            "prompt_file": str(ctx.prompt_file),
            "batch_id": ctx.batch_id,
            "workdir": str(ctx.workdir),
            "run_id": ctx.run_id,
            "stream": str(ctx.stream + 1),
        }
        # Split first, substitute after: a prompt full of quotes and semicolons stays one argument.
        argv = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in validate_template(cfg.template)]
        parse: Callable[[str, int | None], AgentOutcome] = parse_exit_code
        preset_env: dict[str, str] = {}
        unset: tuple[str, ...] = ()
    else:
        preset = PRESETS.get(cfg.preset)
        if preset is None:
            raise UsageError(f"unknown agent preset {cfg.preset!r} (known: {', '.join(PRESETS)})")
        argv, parse, preset_env, unset = preset.build(cfg, ctx), preset.parse, preset.env(), preset.unset
    env = {k: v for k, v in base_env.items() if k not in unset}
    env.update(preset_env)
    env.update(extra_env)
    env.update(
        {
            GUARD_VAR: "1",
            "DISTPAR_RUN_ID": ctx.run_id,
            "DISTPAR_BATCH_ID": ctx.batch_id,
            "DISTPAR_STREAM": str(ctx.stream + 1),
            "DISTPAR_WORKTREE": str(ctx.workdir),
            "DISTPAR_PROMPT_FILE": str(ctx.prompt_file),
        }
    )
    return Invocation(argv, env), parse
