"""MkDocs hook: the reference tables come from distpar's own declarations at build time, so they cannot drift.

A page asks for a table with a line ``<!-- distpar:NAME -->``; ``TABLES`` maps each NAME to one function that
returns its markdown. ``CHECKS`` hold hand-written pages to the source: a page that names a field, key or
variable distpar does not have, or misses one it has, is a warning, and ``mkdocs build --strict`` fails on it.
When a declaration moves (the run options becoming one dataclass, modules moving into packages), only the
function that reads it changes.
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("mkdocs.hooks.distpar")
ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- distpar:([a-z-]+) -->$", re.M)


def _module(*names: str) -> Any:
    """The first of ``names`` that imports (a module may have moved into a package)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {', '.join(names)}")


def _text(text: str) -> str:
    """Help text as markdown shows it verbatim: ``<PRESET>`` is not a tag, ``_`` and ``*`` are not emphasis."""
    return re.sub(r"([\\`*_\[\]])", r"\\\1", html.escape(text, quote=False))


def _cell(text: str, markdown: bool = False) -> str:
    """One table cell: help text verbatim, or (``markdown``) a description written as markdown."""
    text = " ".join(text.split())
    return (text if markdown else _text(text)).replace("|", "\\|")


def _code(text: str) -> str:
    """Code in a table cell: markdown would show a ``\\|`` inside backticks as it is."""
    return "<code>" + html.escape(" ".join(text.split())).replace("|", "&#124;") + "</code>"


# --- the tables --------------------------------------------------------------------------------------------


def cli_reference() -> str:
    """Every command of ``distpar`` with its usage, help and every option, as ``--help`` prints them."""
    group: click.Group = _module("distpar.cli.main").cli
    root = click.Context(group, info_name="distpar")
    out = ["## distpar", "", f"```\n{group.get_usage(root)}\n```", "", _text(group.help or ""), "",
           _params_table(group, root), ""]
    for name in sorted(group.commands):
        cmd = group.commands[name]
        ctx = click.Context(cmd, info_name=name, parent=root)
        out += [f"## distpar {name}", "", f"```\n{cmd.get_usage(ctx)}\n```", "",
                _text(inspect.cleandoc(cmd.help or "")), "", _params_table(cmd, ctx), ""]
    return "\n".join(out)


def _params_table(cmd: click.Command, ctx: click.Context) -> str:
    rows = ["| option | what it does |", "|---|---|"]
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Argument):
            rows.append(f"| `{p.make_metavar(ctx)}` | argument{'' if p.required else ' (optional)'} |")
            continue
        record = p.get_help_record(ctx)
        if record is not None:
            rows.append(f"| {_code(record[0])} | {_cell(record[1])} |")
    return "\n".join(rows)


def exit_codes() -> str:
    """The ``ExitCode`` enum: code, name, meaning; then the order the CLI picks the most severe by."""
    codes = _module("distpar.core.errors").ExitCode
    rows = ["| code | name | meaning |", "|---|---|---|"]
    rows += [f"| {int(c)} | `{c.name}` | {_cell(c.description, markdown=True)} |" for c in codes]
    ranks: dict[int, list[str]] = {}
    for c in codes:
        ranks.setdefault(c.severity, []).append(str(int(c)))
    order = " > ".join(" = ".join(v) for _, v in sorted(ranks.items(), reverse=True))
    return "\n".join(rows) + f"\n\nWhen several apply, distpar exits with the most severe: {order}.\n"


def config_keys() -> str:
    """The ``[tool.distpar]`` keys, from the run options' one declaration (``distpar/coordinator/options.py``):
    each key's kind, default, the ``distpar run`` flag that overrides it and what it does."""
    declared = _module("distpar.coordinator.options").declared
    rows = ["| key | kind | default | flag | what it does |", "|---|---|---|---|---|"]
    for key, opt, default in declared():
        if not opt.config:
            continue
        shown = default / opt.scale if opt.scale != 1 and isinstance(default, (int, float)) else default
        rows.append(f"| `{key}` | {opt.kind} | `{shown!r}` | `{opt.flag}` | {_cell(opt.help)} |")
    return "\n".join(rows)


def fake_agent() -> str:
    """The fake agent's own docstring: its emulations and the ``@fake`` directives."""
    doc = inspect.cleandoc(_module("distpar.testing.fake_agent").__doc__ or "")
    return f"```text\n{doc}\n```"


TABLES: dict[str, Callable[[], str]] = {
    "cli": cli_reference,
    "exit-codes": exit_codes,
    "config-keys": config_keys,
    "fake-agent": fake_agent,
}


# --- the checks of hand-written pages ----------------------------------------------------------------------


def manifest_fields(markdown: str) -> list[str]:
    """Every manifest field the plan parser knows has a row ``| `field` | level | ...``, and no row more."""
    plan = _module("distpar.core.plan", "distpar.core.plan")
    known = {"manifest": plan._TOP_KEYS, "batch": plan._BATCH_KEYS, "agent": plan._AGENT_KEYS}
    documented: dict[str, set[str]] = {level: set() for level in known}
    for field, levels in re.findall(r"^\| `([a-z_]+)` \| ([a-z, ]+) \|", markdown, re.M):
        for level in (lv.strip() for lv in levels.split(",")):
            documented.setdefault(level, set()).add(field)
    problems = []
    for level, fields in known.items():
        problems += [f"{level} field {f!r} is not documented" for f in sorted(fields - documented[level])]
        problems += [f"{level} field {f!r} is documented but not parsed" for f in sorted(documented[level] - fields)]
    return problems


VARIABLE = re.compile(r"\bDISTPAR_[A-Z_]*[A-Z](?:_<PRESET>_BIN)?")


def _used_variables(deploy: bool = False) -> set[str]:
    """What the package reads or sets (and, with ``deploy``, what deploy/'s scripts and files do)."""
    files = [*(ROOT / "distpar").rglob("*.py"), *((p for p in (ROOT / "deploy").rglob("*")
                                                   if p.is_file() and ".build" not in p.parts) if deploy else ())]
    found = set()
    for f in files:
        try:
            found.update(VARIABLE.findall(f.read_text()))
        except (UnicodeDecodeError, OSError):
            continue
    return found - {"DISTPAR_AGENT"}


def _named_variables(markdown: str) -> set[str]:
    return {n for n in VARIABLE.findall(markdown) if not re.fullmatch(r"DISTPAR_AGENT_[A-Z]+_BIN", n)}  # examples


def environment(markdown: str) -> list[str]:
    """Every ``DISTPAR_*`` variable the package reads or sets is named on the page, and none it does not."""
    used, named = _used_variables(), _named_variables(markdown)
    return ([f"{v} is used by distpar but not documented" for v in sorted(used - named)]
            + [f"{v} is documented but distpar does not use it" for v in sorted(named - used)])


def known_variables(markdown: str) -> list[str]:
    """A page names no ``DISTPAR_*`` variable distpar does not have (a misspelt one sends readers nowhere)."""
    unknown = _named_variables(markdown) - _used_variables(deploy=True)
    return [f"{v} is named but neither distpar nor deploy/ uses it" for v in sorted(unknown)]


CHECKS: dict[str, Callable[[str], list[str]]] = {
    "reference/manifest.md": manifest_fields,
    "reference/configuration.md": environment,
}


# --- the hook ----------------------------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    src = page.file.src_uri
    for problem in [*CHECKS.get(src, lambda _: [])(markdown),
                    *(known_variables(markdown) if src not in CHECKS else [])]:
        log.warning("%s: %s", src, problem)

    def table(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in TABLES:
            log.warning("%s: unknown table %r (known: %s)", src, name, ", ".join(TABLES))
            return m.group(0)
        return TABLES[name]()

    return MARKER.sub(table, markdown)
