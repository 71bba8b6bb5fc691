"""Claude Code, headless (``claude -p``): its arguments, its JSON / stream-json result, and the ``--agent`` a
plan's subagent_type selects."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distpar.agents.base import (
    RATE_TEXT,
    TRANSIENT,
    USAGE_LIMIT,
    Context,
    Preset,
    as_float,
    as_int,
    classify_status,
    crash,
    json_dict,
    json_lines,
    last_line,
    usage_reset,
)
from distpar.core.model import AgentConfig, AgentOutcome


def claude_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # Claude Code headless mode, https://docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless and
    # https://docs.anthropic.com/en/docs/claude-code/cli-reference: `-p` (print), `--output-format json`
    # (`stream-json` only together with `--verbose`, else the CLI exits 1), `--permission-mode
    # bypassPermissions` (edit and run commands without asking; there is no --headless flag), `--model`,
    # `--max-turns`, `--max-budget-usd` (print mode only, checked between turns). `--session-id=<uuid>` in the
    # `=` form, as the official claude-agent-sdk-python (_build_command) emits it, so that a later
    # `--resume=<id>` of the same batch parses the same way. The prompt comes after `--`, as the SDK does, so a
    # prompt that starts with '-' is never read as an option.
    args = ["-p", "--output-format", "stream-json" if cfg.stream else "json"]
    if cfg.stream:
        args.append("--verbose")
    args += ["--permission-mode", "bypassPermissions"]
    if cfg.model:
        args += ["--model", cfg.model]
    if cfg.max_turns:
        args += ["--max-turns", str(cfg.max_turns)]
    if cfg.max_budget_usd:
        args += ["--max-budget-usd", f"{cfg.max_budget_usd:g}"]
    args.append(f"--resume={ctx.session_id}" if ctx.resume else f"--session-id={ctx.session_id}")
    agent = _claude_agent(ctx)
    if agent:
        args += ["--agent", agent]
    # A prompt too long for one argument goes on stdin: `claude -p` reads it there when no prompt is given.
    return [*args, *cfg.extra_args, *([] if ctx.prompt_on_stdin else ["--", ctx.prompt])]


_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _claude_agent(ctx: Context) -> str | None:
    """The plan's subagent_type when Claude Code has an agent of that name: ``.claude/agents/NAME.md`` in the
    worktree or in ``~/.claude/agents`` (``claude --help``: ``--agent <agent>``). ``main`` and the built-in
    ``general-purpose`` are the default agent, so no flag."""
    name = ctx.subagent_type
    if not name or name in ("main", "general-purpose") or not _AGENT_NAME.match(name):
        return None
    for root in (ctx.workdir, Path.home()):
        if (root / ".claude" / "agents" / f"{name}.md").is_file():
            return name
    return None


def subagent_how(cfg: AgentConfig, repo_root: str | Path | None) -> Callable[[str], str]:
    """For ``distpar plan`` / ``--dry-run``: how each subagent_type will reach the agent, by the same rule the
    claude preset applies in a worktree (a worktree has the repository's ``.claude/agents``)."""
    def how(name: str) -> str:
        if name in ("main", "general-purpose"):
            return "the agent's default agent (no flag)"
        if cfg.preset != "claude" or cfg.preset_pickle:
            return f"stays in the prompt (only claude selects an agent by name; this run uses {cfg.preset})"
        ctx = Context("", Path(), "", Path(repo_root or "."), "", 0, subagent_type=name)
        if _claude_agent(ctx):
            return f"claude --agent {name} (defined in .claude/agents/{name}.md)"
        return f"stays in the prompt (no .claude/agents/{name}.md for the repository or the user)"

    return how


def claude_env() -> dict[str, str]:
    # As root, bypassPermissions refuses to start ("cannot be used with root/sudo privileges") unless
    # IS_SANDBOX=1 (https://github.com/anthropics/claude-code/issues/3490). distpar runs agents in worktrees,
    # usually in containers when root; README "Agents" documents this.
    return {"IS_SANDBOX": "1"} if hasattr(os, "geteuid") and os.geteuid() == 0 else {}


# Startup failures that another try cannot fix.
_CLAUDE_FATAL = re.compile(
    r"cannot be launched inside another claude code session|cannot be used with root/sudo|requires --verbose"
    r"|unknown option|error: option|invalid api key|please run /login|no conversation found",
    re.IGNORECASE,
)


def parse_claude(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify a Claude Code ``json`` / ``stream-json`` result on ``subtype`` (not the exit code, and not
    ``is_error`` for a budget stop: a run stopped by --max-budget-usd has been seen with is_error false)."""
    data = claude_result(stdout)
    limit = _claude_rate_limit(stdout)
    if data is None:
        both = stdout + "\n" + stderr
        if USAGE_LIMIT.search(both):  # 1.0.x in text mode prints only "Claude AI usage limit reached|<epoch>"
            return AgentOutcome("usage_limit", False, last_line(both), rate_limited=True,
                                resets_at=usage_reset(both) or limit.get("resets_at"))
        if _NO_SESSION.search(both):
            # --resume of a session Claude Code never saved (interrupted in its first second): the worker runs
            # the same try again in a fresh session (Context.fresh_session), the restored work in the tree.
            return AgentOutcome("error", False, last_line(_NO_SESSION.search(both).group(0)),  # type: ignore[union-attr]
                                session_missing=True)
        if _CLAUDE_FATAL.search(stderr):
            return AgentOutcome("error", False, last_line(stderr))
        return crash(exit_code, stderr, "no JSON result on stdout")
    usage = data.get("usage") or {}
    model = next(iter(data.get("modelUsage") or {}), None)
    subtype = str(data.get("subtype", ""))
    errors = [str(e) for e in data.get("errors") or [] if e]
    text = "\n".join([str(data.get("result", "") or data.get("error", "") or ""), *errors]).strip()
    is_error = data.get("is_error") is True
    cls, transient = "success", False
    if subtype == "error_max_turns" or data.get("terminal_reason") == "max_turns":
        cls, text = "max_turns", text or "reached the turn limit (--max-turns)"
    elif subtype == "error_max_budget_usd" or "budget" in subtype:
        cls, text = "budget_exceeded", text or "reached the batch budget (--max-budget-usd)"
    elif subtype in ("", "success") and not is_error and exit_code in (0, None):
        pass
    else:
        # A failed API call arrives as subtype "success" with is_error true, the text in `result` ("API Error:
        # ..." whatever the status), and on 2.x `api_error_status`, which decides: 400/401/403 are permanent,
        # 429/529/5xx transient. Older CLIs give only the text, with the status after "API Error:".
        status = data.get("api_error_status")
        if not isinstance(status, int):
            m = _API_STATUS.search(text)
            status = int(m.group(1)) if m else None
        if USAGE_LIMIT.search(text) or (is_error and limit.get("rejected")):
            cls = "usage_limit"
        elif status is not None:
            cls, transient = classify_status(status)
        elif TRANSIENT.search(text):
            cls, transient = "api_error", True
        else:
            cls = "error"
            text = text or f"{subtype or 'error'} (exit code {exit_code})"
    return AgentOutcome(
        result_class=cls,
        ok=cls == "success",
        message=text[-2000:],
        cost_usd=as_float(data.get("total_cost_usd", data.get("cost_usd"))),
        input_tokens=as_int(usage.get("input_tokens")),
        output_tokens=as_int(usage.get("output_tokens")),
        cache_read_tokens=as_int(usage.get("cache_read_input_tokens")),
        cache_creation_tokens=as_int(usage.get("cache_creation_input_tokens")),
        turns=as_int(data.get("num_turns")),
        duration_api_ms=as_int(data.get("duration_api_ms")),
        session_id=data.get("session_id"),
        model=model,
        transient=transient,
        rate_limited=cls == "usage_limit" or (cls == "api_error" and RATE_TEXT.search(text) is not None),
        resets_at=usage_reset(text) or limit.get("resets_at"),
    )


def claude_result(stdout: str) -> dict[str, Any] | None:
    """The final ``result`` object: the whole of stdout (json) or its last result line (stream-json)."""
    whole = json_dict(stdout.strip())
    if whole is not None and whole.get("type", "result") == "result":
        return whole
    for obj in json_lines(stdout, reverse=True):
        if obj.get("type") == "result":
            return obj
    return None


_NO_SESSION = re.compile(r"No conversation found with session ID:?\s*\S*", re.IGNORECASE)
_API_STATUS = re.compile(r"API Error:\s*(\d{3})\b")


def _claude_rate_limit(stdout: str) -> dict[str, Any]:
    """From stream-json's last ``rate_limit_event``: ``{"rejected": bool, "resets_at": epoch}``
    (``{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1767225600,...}}``)."""
    for o in json_lines(stdout, reverse=True):
        if o.get("type") == "rate_limit_event":
            info = o.get("rate_limit_info") or {}
            resets = as_float(info.get("resetsAt"))
            if resets is not None and resets > 1e11:  # milliseconds
                resets /= 1000
            return {"rejected": info.get("status") == "rejected", "resets_at": resets}
    return {}


CLAUDE = Preset(
    "claude", "claude", "Claude Code, headless (claude -p, JSON result)", claude_args, parse_claude,
    key_vars=("ANTHROPIC_API_KEY",),  # https://code.claude.com/docs/en/env-vars ; else its saved login
    supports=frozenset({"model", "max_turns", "max_budget_usd", "stream", "resume"}), reports_cost=True,
    env=claude_env, unset=("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"), prompt_stdin=True,
)
