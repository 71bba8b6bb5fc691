"""One agent run: the argv, environment, result parser and secrets of a preset applied to a ``Context``, and the
outcome of a run stopped for silence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from distpar.agents.base import GUARD_VARS, RATE_TEXT, Context, Invocation, Parser, strip_ansi, usage_reset
from distpar.agents.registry import preset_of, secret_values, unsupported
from distpar.core.model import AgentConfig, AgentOutcome


def invocation(cfg: AgentConfig, ctx: Context, base_env: Mapping[str, str], extra_env: Mapping[str, str],
               forwarded: Mapping[str, str] | None = None) -> Invocation:
    """The argv, environment, result parser and secrets of one agent run. ``forwarded``: the ``--forward-env``
    variables (part of ``extra_env``), whose values are masked."""
    preset = preset_of(cfg)
    env = {k: v for k, v in base_env.items() if k not in preset.unset}
    env.update(preset.env())
    env.update(extra_env)
    env.update({var: "1" for var in GUARD_VARS})
    env.update(
        {
            "DISTPAR_RUN_ID": ctx.run_id,
            "DISTPAR_BATCH_ID": ctx.batch_id,
            "DISTPAR_WORKER": str(ctx.worker + 1),
            "DISTPAR_STREAM": str(ctx.worker + 1),  # the old name of DISTPAR_WORKER, kept for existing scripts
            "DISTPAR_WORKTREE": str(ctx.workdir),
            "DISTPAR_PROMPT_FILE": str(ctx.prompt_file),
        }
    )
    refused = preset.refuse(cfg, ctx, env)
    argv = [f"({preset.name}: not started)"] if refused else preset.argv(cfg, ctx, base_env)
    parse = _cleaned(preset.parse)
    notes = tuple(unsupported(cfg))
    stdin = ctx.prompt_file if ctx.prompt_on_stdin and preset.prompt_stdin else None
    return Invocation(argv, env, parse, secret_values(env, forwarded or {}), notes, stdin=stdin, refused=refused,
                      stall_timeout=cfg.stall_timeout)


def _cleaned(parse: Parser) -> Parser:
    """``parse`` on the text without terminal escapes; a rate-limit answer flagged as such (ratelimit.py)."""
    def run(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
        out = parse(strip_ansi(stdout), strip_ansi(stderr), exit_code)
        limited = out.rate_limited or out.result_class == "usage_limit" or (
            out.result_class == "api_error" and RATE_TEXT.search(out.message) is not None)
        if out.result_class == "usage_limit" and out.resets_at is None:
            out = replace(out, resets_at=usage_reset(out.message))
        return replace(out, rate_limited=limited) if limited != out.rate_limited else out

    return run


def stalled(inv: Invocation, stdout: str, stderr: str) -> AgentOutcome:
    """The outcome of an agent stopped after ``inv.stall_timeout`` seconds without output: transient (a model
    server that stopped answering; codex printing "Reconnecting..." and then waiting for ever)."""
    lines = [ln for ln in strip_ansi(stdout + "\n" + stderr).splitlines() if "reconnecting" in ln.lower()]
    why = f"; last: {lines[-1].strip()[-300:]}" if lines else ""
    return AgentOutcome("stalled", False, f"no output for {inv.stall_timeout:g}s: stopped{why}", transient=True)
