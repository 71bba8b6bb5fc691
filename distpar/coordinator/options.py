"""Run options, declared once. Each field of ``RunOptions`` carries an ``Option`` in its metadata (help, CLI flag,
whether the repository's ``[tool.distpar]`` may set it, whether it travels to the workers, whether ``resume`` may
change it); the CLI's flags (``distpar.cli.options``), the ``[tool.distpar]`` keys (``distpar.coordinator.config``),
the journal's row and its reading back on resume (``to_row``/``from_row``), the Python API (``distpar.run``), the
MCP server's ``run`` tool and the reference docs are all derived from it.

Adding an option: one field here (or, when the workers act on it, in ``distpar.core.model.WorkerOptions``,
which ``RunOptions`` extends); then use it where it acts (``options.NAME`` in the coordinator,
``settings.options.NAME`` in the worker)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from distpar.core import serial
from distpar.core.model import AgentConfig, WorkerOptions
from distpar.core.option import Option, opt

DEFAULT_TIMEOUT = 3600.0
DEFAULT_WORKERS = 4  # locally and on Ray; on SSH the hosts' slots
ROW_VERSION = 2  # the journal's ``options`` column (1: written by hand, before the declaration)


@dataclass(frozen=True, slots=True)
class RunOptions(WorkerOptions):
    """What a run is asked to do beyond the plan and the worker count (see the module's docstring); the
    options that travel to every worker are declared in ``WorkerOptions``, which this extends."""
    agent: AgentConfig = opt(factory=AgentConfig, kind="agent",
                             help="The agent every unit runs (a preset or a template).")
    timeout: float = opt(
        DEFAULT_TIMEOUT, flag="--timeout", kind="float", min=0, min_open=True, metavar="SECONDS", config=True,
        resume=True, help="Seconds per unit (a plan's per-batch timeout wins).")
    into: str | None = opt(
        flag="--into", metavar="BRANCH",
        help="Branch to merge into (default: the plan's target_branch, else the checked-out one).")
    allow_dirty: bool = opt(
        False, flag="--allow-dirty", kind="bool", help="Start even if the working tree has uncommitted changes.")
    keep_branches: bool = opt(
        False, flag="--keep-branches", kind="bool", config=True, negatable=True,
        help="Keep the unit branches after a successful landing.")
    retries: int = opt(
        2, flag="--retries", kind="int", min=0, config=True, resume=True,
        help="Times a unit is run again (elsewhere) when its worker, node or host fails.")
    forward_env: tuple[str, ...] = opt(
        (), flag="--forward-env", kind="list", metavar="NAME",
        help="Environment variable passed to agents (its value is masked in logs and the journal).")
    backend: str = opt("local", help="Where the workers run (local, ray, ssh).")
    plan_path: str = opt("", help="The plan file (journaled: resume rereads it).")
    repo_url: str | None = opt(
        flag="--repo-url", metavar="URL",
        help="Remote workers clone from and push their branches to this git remote (default: bundles).")
    backend_options: dict[str, Any] = opt(factory=dict, kind="dict", help="The backend's own options (never secrets).")
    budget_usd: float | None = opt(
        flag="--budget-usd", kind="float", min=0, min_open=True, metavar="USD", config=True, resume=True,
        help="Run-wide: once the agents' reported costs (over every attempt) reach it, no new unit starts.")
    stop_on_conflict: bool = opt(
        False, flag="--stop-on-conflict", kind="bool", config=True, negatable=True,
        help="Start no new unit once a finished unit's work is found to conflict with work already finished.")
    on_conflict: str = opt(
        "stop", flag="--on-conflict", choices=("stop", "rerun", "resolve"), config=True,
        help="When units' work conflicts: stop (nothing is resolved), rerun (a merge queue: the unit runs again from "
             "everything integrated so far) or resolve (the agent resolves each conflicting final merge; gated by "
             "--verify/--verify-merged).")
    max_reruns: int = opt(
        1, flag="--max-reruns", kind="int", min=0, metavar="N", config=True,
        help="With --on-conflict rerun: times one unit may run again after a conflict.")
    verify_merged: str | None = opt(
        flag="--verify-merged", metavar="CMD", config=True,
        help="Run on the merged tree before the target moves; if it fails nothing lands (exit 5).")
    verify_each_merge: bool = opt(
        False, flag="--verify-each-merge", kind="bool", config=True, negatable=True,
        help="Run --verify-merged's check after every merge of the final merge (in plan order, up to the first "
             "failure) instead of once on the merged tree and bisecting when it fails: for cheap checks.")
    on_verify_fail: str = opt(
        "stop", flag="--on-verify-fail", metavar="stop|fix", config=True,
        help="When --verify-merged fails: stop (nothing lands), or fix: hand the check's output to the agent as a "
             "new unit on the integration branch (its commit kept on a ref), then run the gate again.")
    max_fixes: int = opt(
        1, flag="--max-fixes", kind="int", min=1, metavar="N", config=True,
        help="With --on-verify-fail fix: how many fix units may run before the run stops at the failing gate.")
    review: bool = opt(
        False, flag="--review", kind="bool", config=True, negatable=True,
        help="Stop after the gates with everything integrated but the target untouched (state review): look with "
             "distpar diff RUN [UNIT], then distpar land RUN [--without UNIT...].")
    push: str | None = opt(
        flag="--push", metavar="REMOTE", config=True,
        help="Push the run's branches (and the target, when it tracks a branch there) to REMOTE.")
    ship_included: bool = opt(
        False, flag="--ship-included", kind="bool",
        help="Remote workers get the .worktreeinclude files too (they often hold secrets; default: local only).")
    independent: bool = opt(False, kind="bool", help="The plan's batches need not wait for each other (--independent).")
    split: int | None = opt(kind="int", min=1, help="Midpoint: cut after this batch (--split).")

def declared() -> Iterator[tuple[str, Option, Any]]:
    """Every run option: (field name, its Option, its default)."""
    for f in dataclasses.fields(RunOptions):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield f.name, f.metadata["option"], default


def check(options: RunOptions) -> None:
    """Refuse a value the declaration does not allow (the CLI's flags check the same through click; this is for
    the Python API, the config and the MCP server), naming the option as its flag."""
    from distpar.core.errors import UsageError

    for name, o, _ in declared():
        value = getattr(options, name)
        label = o.flag or name
        if value is None:
            continue
        if o.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (o.kind == "int" and
                                                                                  not isinstance(value, int)):
                raise UsageError(f"{label}: {value!r} is not {'an integer' if o.kind == 'int' else 'a number'}")
            if o.min is not None:
                low = o.min * (o.scale if o.scale != 1 else 1)
                if value < low or (o.min_open and value == low):
                    raise UsageError(f"{label}: {value!r} is not {'>' if o.min_open else '>='} {o.min:g}")
        elif o.kind == "bool" and not isinstance(value, bool):
            raise UsageError(f"{label}: {value!r} is not true or false")
        elif o.kind == "str" and not isinstance(value, str):
            raise UsageError(f"{label}: {value!r} is not a string")
        elif o.choices and value not in o.choices:
            raise UsageError(f"{label}: {value!r} is not one of {', '.join(o.choices)}")
        elif o.kind == "list" and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
            raise UsageError(f"{label}: {value!r} is not a list of strings")
    if options.on_verify_fail not in ("stop", "fix"):
        raise UsageError(f"--on-verify-fail: {options.on_verify_fail!r} is not stop or fix")
    if options.on_verify_fail == "fix" and not options.verify_merged:
        raise UsageError("--on-verify-fail fix needs --verify-merged CMD: the check the fix must make pass")
    if options.verify_each_merge and not options.verify_merged:
        raise UsageError("--verify-each-merge needs --verify-merged CMD: the check it runs after every merge")


def stored(o: Option, value: Any) -> Any:
    """A flag's or a ``[tool.distpar]`` setting's value in the form ``RunOptions`` keeps it (scaled to its unit;
    a list as a tuple)."""
    if o.scale != 1:
        value = int(value * o.scale) or None
    return tuple(value) if o.kind == "list" else value


def config_keys() -> dict[str, str]:
    """The ``[tool.distpar]`` keys: field name -> kind."""
    return {name: o.kind for name, o, _ in declared() if o.config}


def worker_options(options: RunOptions) -> WorkerOptions:
    """What of ``options`` travels to the workers: its ``WorkerOptions`` part."""
    return WorkerOptions(**{f.name: getattr(options, f.name) for f in dataclasses.fields(WorkerOptions)})


def to_row(options: RunOptions) -> dict[str, Any]:
    """The journal's ``options`` column (never a secret: forward_env holds names only)."""
    return {"version": ROW_VERSION, **serial.dump(options)}


def from_row(row: dict[str, Any], **overrides: Any) -> RunOptions:
    """``to_row``'s output (or a version-1 row, whose keys are the same fields) back, with ``overrides``."""
    data = {k: v for k, v in row.items() if k != "version"}
    return dataclasses.replace(serial.load(RunOptions, data), **overrides)
