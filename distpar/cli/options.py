"""The run options as click flags, derived from their one declaration (``distpar.coordinator.options``): a flag
left out is None, so the repository's ``[tool.distpar]`` and then the declared default apply."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from distpar.coordinator.options import declared, stored
from distpar.core.option import Option


def _param_type(o: Option) -> Any:
    if o.choices:
        return click.Choice(o.choices)
    if o.kind == "int":
        return click.IntRange(min=None if o.min is None else int(o.min), min_open=o.min_open)
    if o.kind == "float":
        return click.FloatRange(min=o.min, min_open=o.min_open)
    return None


def _default_text(o: Option, default: Any) -> str:
    if o.kind == "bool" or default in (None, (), ""):
        return ""
    shown = default / o.scale if o.scale != 1 and isinstance(default, (int, float)) else default
    return f" [default: {shown:g}]" if isinstance(shown, float) else f" [default: {shown}]"


def click_option(name: str, o: Option, default: Any) -> Callable[[Any], Any]:
    """One declared option as a click option whose parameter is the field's name."""
    assert o.flag
    help_text = o.help + _default_text(o, default) + (" [tool.distpar]: " + name if o.config else "")
    if o.kind == "bool":
        decl = f"{o.flag}/--no-{o.flag[2:]}" if o.negatable else o.flag
        return click.option(decl, name, is_flag=True, default=None, help=help_text)
    return click.option(o.flag, name, type=_param_type(o), default=None, multiple=o.kind == "list",
                        metavar=o.metavar, help=help_text)


def run_option_flags(only: Iterable[str] | None = None, resume: bool = False) -> Callable[[Any], Any]:
    """A decorator adding the flags of every declared run option with one (``resume``: only those ``distpar
    resume`` may change; ``only``: just these names)."""
    chosen = [(n, o, d) for n, o, d in declared() if o.flag and (not resume or o.resume)
              and (only is None or n in only)]

    def decorate(f: Any) -> Any:
        for name, o, default in reversed(chosen):
            f = click_option(name, o, default)(f)
        return f

    return decorate


def given_options(params: dict[str, Any]) -> dict[str, Any]:
    """The declared options among click's ``params`` that were given, in their stored form (scaled, tuples);
    they are removed from ``params``."""
    out: dict[str, Any] = {}
    for name, o, _ in declared():
        if not o.flag or name not in params:
            continue
        value = params.pop(name)
        if value is None or (o.kind == "list" and not value):
            continue
        out[name] = stored(o, value)
    return out
