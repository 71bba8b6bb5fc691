"""OpenAI Codex CLI (``codex exec --json``): its arguments and its JSONL events."""

from __future__ import annotations

import re
from typing import Any

from distpar.agents.base import USAGE_LIMIT, Context, Preset, as_int, classify_text, crash, json_lines, last_line
from distpar.core.model import AgentConfig, AgentOutcome


def _codex_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # `codex exec [OPTIONS] [PROMPT]`, https://developers.openai.com/codex/noninteractive and openai/codex
    # docs/exec.md, codex-rs/exec/src/cli.rs: `--json` prints JSONL events; `--sandbox workspace-write` lets it
    # edit the worktree (the exec default is read-only; `--full-auto` is deprecated for this); a worktree is a
    # git repository but `--skip-git-repo-check` keeps exec from refusing one it does not trust; `-m` the
    # model. The prompt is positional (`-p` is a config *profile* in codex), after `--`. stdin is /dev/null
    # (process.run_process): exec reads piped stdin and would wait for its end. No turn or budget limit exists.
    # A prompt too long for one argument goes on stdin: the positional prompt `-` makes exec read it there.
    args = ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    if cfg.model:
        args += ["-m", cfg.model]
    return [*args, *cfg.extra_args, "--", "-" if ctx.prompt_on_stdin else ctx.prompt]


def parse_codex(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify ``codex exec --json`` JSONL events (codex-rs/exec/src/exec_events.rs)."""
    thread_id = message = failed = None
    usage: dict[str, Any] = {}
    turns = 0
    errors: list[str] = []
    for ev in json_lines(stdout):
        kind = ev.get("type")
        if kind == "thread.started":
            thread_id = ev.get("thread_id")
        elif kind == "turn.completed":
            turns += 1
            # The usage of turn.completed is the thread's running total (event_processor_with_jsonl_output.rs,
            # usage_from_last_total); exec runs one turn, so its last value is the sum over the run.
            usage = ev.get("usage") or {}
        elif kind == "turn.failed":
            failed = str((ev.get("error") or {}).get("message") or "turn failed")
        elif kind == "error":  # emitted also for errors codex retries itself; fatal only if nothing follows
            errors.append(str(ev.get("message", "")))
        elif kind == "item.completed":
            item = ev.get("item") or {}
            if item.get("type") == "agent_message":
                message = str(item.get("text", ""))
    common: dict[str, Any] = {
        "input_tokens": as_int(usage.get("input_tokens")),
        "output_tokens": as_int(usage.get("output_tokens")),
        "cache_read_tokens": as_int(usage.get("cached_input_tokens")),
        "turns": turns or None,
        "session_id": thread_id,
    }
    if not turns and failed is None and not errors:  # it died before the turn ended (or never started one)
        both = stdout + "\n" + stderr
        if USAGE_LIMIT.search(both):  # a usage limit can end exec before any event, with only stderr text
            return AgentOutcome("usage_limit", False, last_line(both))
        if exit_code == 2 or re.search(r"^error: ", stderr, re.MULTILINE):  # clap: bad arguments
            return AgentOutcome("error", False, last_line(stderr))
        return crash(exit_code, stderr, "no JSON events on stdout")
    failure = failed if failed is not None else (errors[-1] if errors and exit_code not in (0, None) else None)
    if failure is not None:
        cls, transient = classify_text("\n".join([failure, *errors[-3:]]))
        return AgentOutcome(cls, False, failure[-2000:], transient=transient, **common)
    if turns and exit_code in (0, None):
        return AgentOutcome("success", True, (message or "")[-2000:], **common)
    if exit_code not in (0, None):
        return AgentOutcome("error", False, f"exit code {exit_code}: {last_line(stderr)}".rstrip(": "), **common)
    return crash(exit_code, stderr, "no turn.completed event")


CODEX = Preset(
    "codex", "codex", "OpenAI Codex CLI (codex exec --json, JSONL events)", _codex_args, parse_codex,
    # CODEX_API_KEY is read by `codex exec` only (docs/exec.md); OPENAI_API_KEY after `codex login`.
    key_vars=("CODEX_API_KEY", "OPENAI_API_KEY"), supports=frozenset({"model"}), prompt_stdin=True,
)
