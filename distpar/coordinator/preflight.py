"""Checks before a run starts: the repository, the target branch, the environment and every agent executable
the plan uses. Each refuses with a sentence that names what is wrong; none changes anything."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from distpar import agents
from distpar.core.errors import NestedRunError, RepoError, UsageError
from distpar.core.model import AgentConfig
from distpar.infra import gitops, paths, sandbox

if TYPE_CHECKING:
    from distpar.coordinator.options import RunOptions
    from distpar.core.plan import Plan


def preflight(repo_path: str | Path, options: RunOptions, plan: Plan | None = None) -> tuple[Path, str, str]:
    """Refuse to start on bad ground. Returns (repo root, target branch, its commit). Changes nothing.
    With ``plan`` on the local backend, every agent executable it uses must be found here."""
    if os.environ.get(agents.GUARD_VAR):
        raise NestedRunError(
            f"distpar is running inside an agent that distpar started ({agents.GUARD_VAR} is set); "
            "a nested run is refused"
        )
    gitops.check_version()
    repo = gitops.repo_root(repo_path)
    if not gitops.has_commits(repo):
        raise RepoError(f"{repo} has no commits yet: commit something first (distpar branches from a commit)")
    target = options.into or gitops.current_branch(repo)
    if not target:
        raise RepoError("HEAD is detached: check out the branch to merge into, or name it with --into BRANCH")
    start = gitops.try_rev(repo, f"refs/heads/{target}")
    if start is None:
        raise RepoError(f"--into {target}: no such branch")
    busy = gitops.busy_with(repo, target)
    if busy:
        raise RepoError(f"cannot land into {target}: {busy}")
    dirty = gitops.dirty_files(repo)
    if dirty and not options.allow_dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise RepoError(
            f"the working tree has uncommitted changes ({shown})",
            hint="commit or stash them first, or pass --allow-dirty (the workers start from the last commit)",
        )
    for var in options.forward_env:
        if var not in os.environ:
            raise RepoError(f"--forward-env {var}: the variable is not set here")
    if plan is not None and options.backend == "local":
        check_agents(plan_agents(plan, options.agent))
    if options.backend == "local":
        paths.worktrees_base(repo)  # refuses a place for worktrees inside the checkout
    if options.sandbox and options.backend == "local":
        sandbox.check()
    return repo, target, start


def plan_agents(plan: Plan, default: AgentConfig) -> dict[str, AgentConfig]:
    """Who uses which agent: "the run's agent" or "batch ID", to the agent configuration."""
    used: dict[str, AgentConfig] = {"the run's agent (--agent)": default}
    for b in plan.batches:
        if b.agent:
            used[f"batch {b.id}"] = agents.agent_config(b.agent, default)
    return used


def executable(cfg: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The program ``cfg`` starts (argv[0]); None when it is not known before the batch runs (a placeholder)."""
    if cfg.preset == "template":
        argv = shlex.split(cfg.template or "")
    elif cfg.preset in agents.PRESETS or cfg.preset_pickle:  # installed, or a preset of the user's own
        argv = agents.command(cfg, env)
    else:
        raise UsageError(f"unknown agent preset {cfg.preset!r} (known: {', '.join(agents.PRESETS)})")
    if not argv or "{" in argv[0]:
        return None
    return argv[0]


def _found(exe: str, env: Mapping[str, str]) -> bool:
    if exe == sys.executable:
        return True
    if os.sep in exe:
        return os.path.isfile(exe) and os.access(exe, os.X_OK)
    return shutil.which(exe, path=env.get("PATH")) is not None


def check_agents(used: Mapping[str, AgentConfig], env: Mapping[str, str] | None = None) -> None:
    """Raise a UsageError naming every agent executable that is not on PATH here, and who needs it."""
    env = os.environ if env is None else env
    missing: dict[str, list[str]] = {}
    for who, cfg in used.items():
        exe = executable(cfg, env)
        if exe is not None and not _found(exe, env):
            missing.setdefault(exe, []).append(who)
    if missing:
        parts = [f"{exe} (needed by {_join(whos)})" for exe, whos in missing.items()]
        raise UsageError(
            "agent executable not found on PATH: " + "; ".join(parts),
            hint="install it, put it on PATH, set DISTPAR_AGENT_<PRESET>_BIN, or pick another --agent "
                 "(distpar agents lists what is installed)",
        )


def _join(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
