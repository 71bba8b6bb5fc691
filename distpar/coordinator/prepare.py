"""Building a run: ``prepare_run`` for a new one (the CLI, the Python API, the MCP server, the tests and the bench
all call it, so each gets every check the CLI makes), ``prepare_resume`` for one the journal holds. Everything that
can be wrong with the input is found here, before any agent runs or anything changes; nothing here prints."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distpar import agents
from distpar.backends import make_backend
from distpar.backends.base import Backend
from distpar.coordinator import options as run_options
from distpar.coordinator.config import repo_settings
from distpar.coordinator.executor import Runner
from distpar.coordinator.journal import Journal
from distpar.coordinator.options import DEFAULT_WORKERS, RunOptions, declared, stored
from distpar.coordinator.preflight import preflight
from distpar.coordinator.runtime import RunLock, load_run, open_journal
from distpar.coordinator.site import Observer
from distpar.core.errors import DistparError, UsageError
from distpar.core.plan import Plan, load_plan
from distpar.core.schedule import Schedule, make_schedule
from distpar.infra import gitops
from distpar.infra.paths import state_dir


@dataclass
class Prepared:
    """A run ready to start, and what the checks found worth saying (the CLI prints them; the API returns them)."""

    runner: Runner
    journal: Journal
    warnings: list[str] = field(default_factory=list)

    def run(self) -> Any:
        try:
            return self.runner.run()
        finally:
            self.journal.close()


def apply_repo_settings(repo_path: str | Path, options: RunOptions, given: set[str]) -> RunOptions:
    """``[tool.distpar]`` under the options not in ``given`` (the ones the caller set): flags > settings > defaults."""
    try:
        root = gitops.repo_root(repo_path)
    except DistparError:
        return options  # preflight says what is wrong with the repository
    settings = {k: v for k, v in repo_settings(root).items() if k not in given}
    for name, o, _ in declared():  # in their stored form, as the flags give them
        if settings.get(name) is not None:
            settings[name] = stored(o, settings[name])
    return dataclasses.replace(options, **settings) if settings else options


def plan_warnings(plan: Plan, options: RunOptions) -> list[str]:
    out = list(agents.check_plan_agents(plan, options.agent, options.budget_usd))
    if options.on_conflict == "resolve" and not (options.verify or options.verify_merged):
        out.append("--on-conflict resolve without --verify or --verify-merged: nothing checks the agent's "
                   "resolutions before they land")
    return out


@dataclass
class Checked:
    """A run that passed every check, not yet built: what ``prepare_run`` builds it from."""

    plan: Plan
    options: RunOptions
    schedule: Schedule
    root: Path
    target: str
    start: str
    warnings: list[str]


def check_run(plan_path: str | Path, options: RunOptions, *, repo: str | Path = ".", workers: int | None = None,
              strategy: str = "balanced", given: set[str] | None = None, plan: Plan | None = None) -> Checked:
    """Every check ``distpar run`` makes before anything starts (the MCP server checks a run with it before it
    starts one detached). ``given``: the option names the caller set explicitly (the rest may come from the
    repository's ``[tool.distpar]``; None: every non-default one)."""
    plan = plan or load_plan(plan_path)
    if given is None:
        defaults = RunOptions()
        given = {f.name for f in dataclasses.fields(RunOptions)
                 if getattr(options, f.name) != getattr(defaults, f.name)}
    options = apply_repo_settings(repo, options, given)
    run_options.check(options)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers: {workers!r} is not an integer >= 1")
    allow = tuple(str(Path(a).expanduser().resolve()) for a in options.sandbox_allow)
    options = dataclasses.replace(options, plan_path=options.plan_path or str(Path(plan_path).resolve()),
                                  into=options.into or plan.target_branch, sandbox_allow=allow)
    if options.sandbox_allow and not options.sandbox:
        raise UsageError("--sandbox-allow goes with --sandbox")
    if options.repo_url and options.backend == "local":
        raise UsageError("--repo-url goes with a remote backend (--backend ray or ssh)")
    workers = workers or default_workers(options.backend, options.backend_options)
    schedule = make_schedule(plan, workers, strategy, options.split)
    warnings = plan_warnings(plan, options)
    root, target, start = preflight(repo, options, plan)
    if options.backend == "local" and gitops.is_sparse(root):
        warnings.append(f"{root} is a sparse checkout: the workers' workspaces hold every file (the agents are not "
                        "limited to its cone)")
    if options.push and gitops.git(root, "remote", "get-url", options.push, check=False).returncode != 0:
        raise UsageError(f"--push {options.push}: no such remote in {root}", hint="git remote -v lists them")
    return Checked(plan, options, schedule, root, target, start, warnings)


def prepare_run(plan_path: str | Path, options: RunOptions, *, repo: str | Path = ".", workers: int | None = None,
                strategy: str = "balanced", given: set[str] | None = None, plan: Plan | None = None,
                observer: Observer | None = None, run_id: str | None = None,
                backend: Backend | None = None) -> Prepared:
    """``check_run``, then the run built (``backend``: a Backend object of the caller's instead of
    ``options.backend``'s, for tests and the bench)."""
    c = check_run(plan_path, options, repo=repo, workers=workers, strategy=strategy, given=given, plan=plan)
    backend = backend or make_backend(c.options.backend, c.options.backend_options)
    journal = open_journal(c.root)
    try:
        runner = Runner(c.root, c.plan, c.schedule, c.options, backend, journal, c.target, c.start, observer,
                        run_id=run_id)
    except BaseException:
        journal.close()
        raise
    runner.warnings = c.warnings
    return Prepared(runner, journal, c.warnings)


def default_workers(backend: str, backend_options: dict[str, Any]) -> int:
    """4 workers, or on SSH the hosts' slots (a host without ``slots`` in the inventory counts 2)."""
    if backend != "ssh":
        return DEFAULT_WORKERS
    from distpar.backends.ssh.hosts import resolve_hosts

    specs = resolve_hosts(backend_options["hosts"], backend_options.get("hosts_file"))
    return sum(s.slots if s.slots is not None else 2 for s in specs)


def prepare_resume(repo: Path, run_id: str, observer: Observer | None = None, **overrides: Any) -> Prepared:
    """The run ``run_id`` of the journal, continued where it stopped; it holds the run's lock (one coordinator).
    ``overrides``: the options ``resume`` may change (``retries``, ``timeout``), None for unchanged."""
    journal = open_journal(repo)
    try:
        run = load_run(journal, run_id)
        lock = RunLock(state_dir(repo) / "runs" / run["id"], run["id"]).acquire()  # before anything changes
        try:
            runner = _resumed(repo, journal, run, observer, overrides)
        except BaseException:
            lock.release()
            raise
    except BaseException:
        journal.close()
        raise
    runner.lock = lock
    return Prepared(runner, journal)


def _resumed(repo: Path, journal: Journal, run: dict[str, Any], observer: Observer | None,
             overrides: dict[str, Any]) -> Runner:
    plan = Plan.from_dict(json.loads(run["plan"]))
    schedule = Schedule.from_dict(json.loads(run["schedule"]))
    # A plan file edited since (say, to fix a failed batch's prompt) is used when its batches and dependencies
    # are unchanged; otherwise the journaled plan is.
    try:
        edited = load_plan(run["plan_path"])
        if [(b.id, b.depends_on) for b in edited.batches] == [(b.id, b.depends_on) for b in plan.batches]:
            plan = edited
    except DistparError:
        pass
    resumable = {name for name, o, _ in run_options.declared() if o.resume}
    unknown = set(overrides) - resumable
    if unknown:
        raise UsageError(f"resume cannot change {', '.join(sorted(unknown))}")
    options = run_options.from_row(json.loads(run["options"]), into=run["target"], allow_dirty=True,
                                   backend=run["backend"], plan_path=run["plan_path"],
                                   **{k: v for k, v in overrides.items() if v is not None})
    backend_options = dict(options.backend_options)
    for key in ("hosts_file", "identity"):
        if backend_options.get(key):
            backend_options[key] = Path(backend_options[key])
    options = dataclasses.replace(options, backend_options=backend_options)
    preflight(repo, options, plan)
    backend = make_backend(run["backend"], backend_options)
    return Runner(repo, plan, schedule, options, backend, journal, run["target"], run["base"], observer,
                  run_id=run["id"], resume=True)
