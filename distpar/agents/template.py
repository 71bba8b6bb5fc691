"""``--agent-cmd 'TEMPLATE'``: any command, its placeholders substituted inside arguments already split."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from distpar.agents.base import Context, Preset, crash, last_line
from distpar.agents.claude import claude_result, parse_claude
from distpar.core.errors import UsageError
from distpar.core.model import AgentConfig, AgentOutcome

# "stream": the old name of "worker", deprecated (existing templates use it)
PLACEHOLDERS = ("prompt", "prompt_file", "batch_id", "workdir", "run_id", "worker", "stream")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


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


@dataclass(frozen=True)
class TemplatePreset(Preset):
    """``--agent-cmd 'TEMPLATE'``: any command. The template is split into arguments first, then the
    placeholders are substituted inside them, so a prompt is always one argument."""

    def argv(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> list[str]:
        if cfg.template is None:
            raise UsageError("the template agent needs a command template (--agent-cmd)")
        values = {
            "prompt": ctx.prompt,
            "prompt_file": str(ctx.prompt_file),
            "batch_id": ctx.batch_id,
            "workdir": str(ctx.workdir),
            "run_id": ctx.run_id,
            "worker": str(ctx.worker + 1),
            "stream": str(ctx.worker + 1),  # the old name of {worker}, kept for existing templates
        }
        return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in validate_template(cfg.template)]

    def refuse(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> str:
        if "\0" in ctx.prompt:
            return "the prompt contains a NUL byte, which no argument or agent can be given"
        if ctx.prompt_on_stdin and cfg.template and "{prompt}" in cfg.template:
            return (f"the prompt ({len(ctx.prompt.encode())} bytes) is too long for one argument: use "
                    "{prompt_file} in the agent command template")
        return ""


def _no_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    return []


def parse_exit_code(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """For templates: a claude-shaped JSON result if there is one, else the exit code."""
    if claude_result(stdout) is not None:
        return parse_claude(stdout, stderr, exit_code)
    if exit_code == 0:
        return AgentOutcome("success", True)
    if exit_code is not None and exit_code < 0:
        return crash(exit_code, stderr, "killed by a signal")
    return AgentOutcome("error", False, f"exit code {exit_code}" + (f": {last_line(stderr)}" if stderr else ""))


TEMPLATE = TemplatePreset(
    "template", "", "any command (--agent-cmd TEMPLATE; placeholders " + ", ".join("{" + p + "}" for p in
                                                                                PLACEHOLDERS) + ")",
    _no_args, parse_exit_code,
)
