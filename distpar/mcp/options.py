"""The tools' option arguments, derived from the click commands' own parameters (never listed again).

``derive(command)`` reads a click command's params (name, type, default, help, flag, multiple) and gives one
``Option`` per option a tool call may set: its JSON-schema type for the tool's input schema and how it turns back
into the command's argv. So ``distpar run --stall-timeout`` is the ``run`` tool's ``stall_timeout`` argument,
with the CLI's range, default and help, and a new option of ``distpar run`` appears in the tool by itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import click
from pydantic import Field

# What makes no sense in a tool call: output format and live view (the tool returns data), the dry run (the
# ``plan`` tool is that), the repository (every tool's own ``repo``, checked against the allow-list), the
# hidden plumbing, and the plan command's --suggest-deps family (it asks an agent and prints a plan).
DENY: Mapping[str, frozenset[str]] = {
    "run": frozenset({"dry_run", "as_json", "quiet", "repo_path", "run_id", "check_only"}),
    "resume": frozenset({"as_json", "quiet", "repo_path"}),
    "plan": frozenset({"as_json", "repo_path", "suggest_deps", "write", "model", "timeout"}),
}


@dataclass(frozen=True)
class Option:
    """One click option as a tool argument."""

    name: str  # the argument's name: the long flag, dashes as underscores (--agent-cmd: agent_cmd)
    param: click.Option
    annotation: Any  # a type for the tool's argument model (JSON schema: type, range, enum, description)
    default: Any

    @property
    def flag(self) -> str:
        return _long_flag(self.param.opts)

    def argv(self, value: Any) -> list[str]:
        """The command-line words that set ``value`` (none for the default)."""
        if value is None:
            return []
        p = self.param
        if p.is_flag and p.secondary_opts:  # --hooks/--no-hooks
            return [self.flag if value else _long_flag(p.secondary_opts)]
        if p.is_flag:
            return [self.flag] if value else []
        if p.multiple:
            return [w for v in value for w in (self.flag, str(v))]
        return [self.flag, _word(value)]


def _long_flag(opts: Sequence[str]) -> str:
    longs = [o for o in opts if o.startswith("--")]
    return max(longs, key=len) if longs else opts[0]


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _base_type(t: click.ParamType) -> Any:
    """The Python type (with JSON-schema constraints) of a click parameter type."""
    if isinstance(t, click.Choice):
        return Literal[tuple(str(c) for c in t.choices)]
    if isinstance(t, (click.IntRange, click.FloatRange)):
        kind: Any = int if isinstance(t, click.IntRange) else float
        bounds: dict[str, Any] = {}
        if t.min is not None:
            bounds["gt" if t.min_open else "ge"] = t.min
        if t.max is not None:
            bounds["lt" if t.max_open else "le"] = t.max
        return Annotated[kind, Field(**bounds)] if bounds else kind
    if isinstance(t, click.types.IntParamType):
        return int
    if isinstance(t, click.types.FloatParamType):
        return float
    if isinstance(t, click.types.BoolParamType):
        return bool
    return str  # STRING, Path (a path on the server's machine, relative to the repository), anything else


def derive(command: click.Command, deny: frozenset[str] = frozenset()) -> list[Option]:
    """The options of ``command`` a tool call may set: every non-hidden option not in ``deny``."""
    out = []
    for p in command.params:
        if not isinstance(p, click.Option) or p.hidden or p.name in deny or p.name is None:
            continue
        name = _long_flag(p.opts).lstrip("-").replace("-", "_")
        base = bool if p.is_flag else _base_type(p.type)
        default = p.default.value if isinstance(p.default, enum.Enum) else p.default
        if not isinstance(default, (str, int, float, tuple, list, Path)):
            default = None  # none, a callable, or click's "unset" sentinel
        if p.multiple:
            kind: Any = list[base]  # type: ignore[valid-type]
            default = list(default) if isinstance(default, (tuple, list)) and default else None
        else:
            kind = base
        if isinstance(default, Path):
            default = str(default)
        if default is None or default == ():
            annotation: Any = Annotated[kind | None, Field(description=p.help or "")]
            default = None
        else:
            annotation = Annotated[kind, Field(description=p.help or "")]
        out.append(Option(name, p, annotation, default))
    return out


def argv(options: Sequence[Option], values: Mapping[str, Any], repo: Path) -> list[str]:
    """The argv words for ``values`` (argument name -> value); a relative path is taken from ``repo``."""
    words: list[str] = []
    for o in options:
        value = values.get(o.name)
        if value is None or (value == o.default and not o.param.is_flag):
            continue
        if isinstance(o.param.type, click.Path):
            value = [str(repo / v) for v in value] if o.param.multiple else str(repo / value)
        words += o.argv(value)
    return words
