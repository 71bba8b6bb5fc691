"""The command line: parses flags, prints, maps errors to exit codes. The only module that prints or exits."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from distpar import __version__, agents, gitops
from distpar.errors import DistparError, ExitCode, UsageError
from distpar.model import AgentConfig
from distpar.plan import Plan, load_plan
from distpar.report import secs
from distpar.schedule import STRATEGIES, Schedule, make_schedule

log = logging.getLogger("distpar")


def err(text: str = "", **style: Any) -> None:
    click.secho(text, err=True, **style)


def debug_log_path() -> Path:
    base = os.environ.get("DISTPAR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "distpar")
    return Path(base) / "debug.log"


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="distpar")
    except DistparError as exc:
        err(f"Error: {exc.message}", fg="red")
        if exc.hint:
            err(f"Hint: {exc.hint}")
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        err("Aborted.")
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as exc:
        exc.show()
        sys.exit(int(ExitCode.USAGE))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err("Interrupted.")
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception as exc:  # a bug: one line here, the traceback in the debug log
        path = debug_log_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} distpar {__version__}: {' '.join(sys.argv)}\n")
                f.write(traceback.format_exc())
            where = f" (traceback in {path})"
        except OSError:
            where = ""
        err(f"Error: unexpected {type(exc).__name__}: {exc}{where}", fg="red")
        err("Hint: this is a bug in distpar; please report it with the traceback")
        sys.exit(int(ExitCode.BACKEND))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="distpar")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Run multi-batch AI coding plans in parallel: locally, on Ray, or over SSH."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _schedule_options(f: Any) -> Any:
    f = click.option("--split", type=int, default=None, help="With --strategy midpoint: cut after batch K.")(f)
    f = click.option("--strategy", type=click.Choice(STRATEGIES), default="balanced", show_default=True,
                     help="How batches are spread over streams.")(f)
    f = click.option("-w", "--workers", type=click.IntRange(min=1), default=None,
                     help="Number of parallel streams [default: 4; with --backend ssh, the hosts' slots].")(f)
    return f


@cli.command("plan")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@_schedule_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_cmd(plan_file: Path, workers: int, strategy: str, split: int | None, as_json: bool) -> None:
    """Show how PLAN_FILE would be scheduled. Changes nothing."""
    plan = load_plan(plan_file)
    schedule = make_schedule(plan, workers or DEFAULT_WORKERS, strategy, split)
    _print_schedule(plan, schedule, as_json)


def _print_schedule(plan: Plan, schedule: Schedule, as_json: bool) -> None:
    warning = None if plan.has_dependencies else (
        "no depends_on declared: batches are treated as independent (plan order is kept inside each stream)"
    )
    if as_json:
        click.echo(json.dumps({"plan_id": plan.plan_id, "source": plan.source, "batches": len(plan.batches),
                               "schedule": schedule.to_dict(), "warnings": [warning] if warning else []}, indent=2))
        return
    click.echo(f"plan {plan.plan_id or '(no id)'} ({plan.source}): {len(plan.batches)} batches, "
               f"{schedule.workers} worker(s), strategy {schedule.strategy}")
    for s in schedule.streams:
        parts = []
        for b in s.batch_ids:
            w = schedule.waits.get(b)
            label = f"{b} ({plan.batch(b).estimate:g}m)"
            if w:
                label += " waits for " + ", ".join(f"{d} (s{schedule.stream_of(d) + 1})" for d in w)
            parts.append(label)
        click.echo(f"  {s.name}: " + " -> ".join(parts))
    idle = schedule.workers - len(schedule.streams)
    if idle > 0:
        click.echo(f"  ({idle} worker(s) idle: not enough batches to spread)")
    click.echo(
        f"estimated makespan {schedule.makespan:g} min, serial {schedule.serial:g} min, "
        f"predicted speedup {schedule.predicted_speedup:.2f}x; lower bound {schedule.lower_bound:g} min "
        f"(critical path {schedule.critical_path:g}, work/N {schedule.serial / schedule.workers:g})"
    )
    if warning:
        err(f"warning: {warning}", fg="yellow")


@cli.command("run")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@_schedule_options
@click.option("--backend", type=click.Choice(["local", "ray", "ssh"]), default="local", show_default=True)
@click.option("--agent", "agent_name", default="claude", show_default=True,
              help=f"Agent preset ({', '.join(agents.PRESETS)}) or a command template.")
@click.option("--agent-cmd", default=None, metavar="TEMPLATE",
              help="Custom agent command; placeholders: " + ", ".join("{" + p + "}" for p in agents.PLACEHOLDERS))
@click.option("--model", default=None, help="Model passed to the agent.")
@click.option("--max-turns", type=click.IntRange(min=1), default=None, help="Per batch.")
@click.option("--max-budget-usd", type=click.FloatRange(min=0, min_open=True), default=None, help="Per batch.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per batch (default 3600; a plan's per-batch timeout wins).")
@click.option("--into", default=None, metavar="BRANCH", help="Branch to merge into (default: the checked-out one).")
@click.option("--allow-dirty", is_flag=True, help="Start even if the working tree has uncommitted changes.")
@click.option("--keep-branches", is_flag=True, help="Keep stream branches after a successful merge.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times a segment is retried (elsewhere) when its worker, node or host fails.")
@click.option("--forward-env", multiple=True, metavar="NAME",
              help="Environment variable passed to agents (its value is masked in logs and the journal).")
@click.option("--agent-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times a batch's agent is tried again after a transient failure (rate limit, 5xx, crash before "
                   "any edit), with exponential backoff.")
@click.option("--max-concurrent-agents", type=click.IntRange(min=1), default=None, metavar="N",
              help="Agents running at once (local backend: the whole run; remote: per worker process/slot).")
@click.option("--stagger", type=click.FloatRange(min=0), default=0.1, show_default=True, metavar="SECONDS",
              help="Pause between agent starts (providers rate-limit bursts of new sessions).")
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Run-wide: once the agents' reported costs reach it, no new batch starts.")
@click.option("--stream-json", is_flag=True,
              help="Agents that can (claude, gemini) log a live JSON event stream instead of one final result.")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Repository to work on (default: the current directory).")
@click.option("--repo-url", default=None, metavar="URL",
              help="Remote workers clone from and push their branches to this git remote (default: bundles).")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="Ray cluster to use, e.g. ray://head:10001 (default: $RAY_ADDRESS, else a local Ray instance).")
@click.option("--hosts", default=None, metavar="H1,H2", help="SSH hosts: [user@]host[:port], comma-separated.")
@click.option("--hosts-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="SSH inventory (TOML): hosts with slots, user, port, key, work directory.")
@click.option("--identity", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="SSH private key.")
@click.option("--accept-unknown-hosts", is_flag=True,
              help="SSH: accept host keys not in known_hosts (insecure; default: refuse).")
@click.option("--hooks/--no-hooks", default=False, show_default=True,
              help="Run the repository's pre-commit, commit-msg and post-commit hooks on distpar's batch commits "
                   "(a failing hook fails that batch, its work saved).")
@click.option("--warn-size", type=click.FloatRange(min=0), default=50.0, show_default=True, metavar="MB",
              help="Warn about every file over this size a batch commits (0: never).")
@click.option("--sandbox", is_flag=True,
              help="Run agents under bubblewrap: writes only to their worktree, their CLI's state directory, "
                   "a private /tmp and --sandbox-allow paths; nothing they start outlives them.")
@click.option("--sandbox-allow", multiple=True, metavar="PATH", help="With --sandbox: a further writable path.")
@click.option("--dry-run", is_flag=True, help="Show the schedule and stop.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (or the schedule) as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def run_cmd(plan_file: Path, workers: int, strategy: str, split: int | None, backend: str, agent_name: str,
            agent_cmd: str | None, model: str | None, max_turns: int | None, max_budget_usd: float | None,
            timeout: float | None, into: str | None, allow_dirty: bool, keep_branches: bool, retries: int,
            forward_env: tuple[str, ...], repo_path: Path, repo_url: str | None, ray_address: str | None,
            hosts: str | None, hosts_file: Path | None, identity: Path | None, accept_unknown_hosts: bool,
            agent_retries: int, max_concurrent_agents: int | None, stagger: float, budget_usd: float | None,
            stream_json: bool, hooks: bool, warn_size: float, sandbox: bool, sandbox_allow: tuple[str, ...],
            dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Run PLAN_FILE: schedule its batches into streams, run an agent per batch, merge the streams."""
    from distpar import runtime
    from distpar.backends import make_backend
    from distpar.preflight import preflight

    plan = load_plan(plan_file)
    if sandbox_allow and not sandbox:
        raise UsageError("--sandbox-allow goes with --sandbox")
    backend_options = _backend_options(backend, ray_address, hosts, hosts_file, identity, accept_unknown_hosts)
    workers = workers or _default_workers(backend, backend_options)
    schedule = make_schedule(plan, workers, strategy, split)
    base_cfg = AgentConfig(preset="claude", model=model, max_turns=max_turns, max_budget_usd=max_budget_usd,
                           stream=stream_json)
    if agent_cmd:
        agent = agents.agent_config(agent_cmd if ("{" in agent_cmd or " " in agent_cmd) else agent_cmd + " {prompt}",
                                    base_cfg)
    else:
        agent = agents.agent_config(agent_name, base_cfg)
    for warning in agents.check_plan_agents(plan, agent, budget_usd):
        err(f"warning: {warning}", fg="yellow")
    if dry_run:
        _print_schedule(plan, schedule, as_json)
        return
    if repo_url and backend == "local":
        raise UsageError("--repo-url goes with a remote backend (--backend ray or ssh)")
    options = runtime.RunOptions(
        agent=agent, timeout=timeout or runtime.DEFAULT_TIMEOUT, into=into, allow_dirty=allow_dirty,
        keep_branches=keep_branches, retries=retries, forward_env=forward_env, backend=backend,
        plan_path=str(plan_file.resolve()), repo_url=repo_url, backend_options=backend_options,
        budget_usd=budget_usd, agent_retries=agent_retries, max_concurrent_agents=max_concurrent_agents,
        stagger=stagger, hooks=hooks, warn_size=int(warn_size * 2**20) or None, sandbox=sandbox,
        sandbox_allow=tuple(str(Path(a).expanduser().resolve()) for a in sandbox_allow),
    )
    repo, target, start = preflight(repo_path, options, plan)
    backend_obj = make_backend(backend, backend_options)
    journal = runtime.open_journal(repo)
    runner = runtime.Runner(repo, plan, schedule, options, backend_obj, journal, target, start)
    _run_and_exit(runner, journal, as_json, quiet)


def _run_and_exit(runner: Any, journal: Any, as_json: bool, quiet: bool) -> None:
    report = _observe_run(runner, as_json, quiet)
    journal.close()
    if as_json:
        click.echo(json.dumps(report.summary()))  # the last JSON line: the run's summary
    else:
        _print_report(report, runner)
    sys.exit(int(report.exit_code))


def _observe_run(runner: Any, as_json: bool, quiet: bool) -> Any:
    """Run ``runner`` with the right observer: JSON lines of events on stdout (--json), nothing (-q), a live
    view on a terminal, plain lines on stderr otherwise."""
    from rich.console import Console

    from distpar import live
    from distpar.worker import node_name

    observer: live.Observer
    if as_json:
        observer = live.Observer() if quiet else live.JsonLines(click.echo)
    elif quiet:
        observer = live.Observer()
    else:
        console = Console(stderr=True)
        progress = live.RunProgress(runner.plan, runner.schedule, "" if runner.backend.remote else node_name())
        if console.is_terminal and not console.is_dumb_terminal:
            log_dir = None if runner.backend.remote else runner.run_dir / "logs"
            observer = live.LiveView(console, progress, log_dir)
        else:
            observer = live.PlainLines(console, progress)
    runner.observer = observer
    with observer:
        return runner.run()


@cli.command("resume")
@click.argument("run_id")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--retries", type=click.IntRange(min=0), default=None, help="Override the run's --retries.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the run's per-batch timeout.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def resume_cmd(run_id: str, repo_path: Path, retries: int | None, timeout: float | None, as_json: bool,
               quiet: bool) -> None:
    """Continue a run that was interrupted, failed, or stopped at a conflict you have resolved.

    Finished batches are never run again; interrupted, failed and never-started ones run from their stream's
    last good commit; the merge continues from where it stopped."""
    from distpar import runtime

    repo = gitops.repo_root(repo_path)
    journal = runtime.open_journal(repo)
    runner = runtime.resume_runner(repo, journal, run_id, None, retries, timeout)
    _run_and_exit(runner, journal, as_json, quiet)


DEFAULT_WORKERS = 4


def _default_workers(backend: str, backend_options: dict[str, Any]) -> int:
    """4 streams, or on SSH the hosts' slots (a host without ``slots`` in the inventory counts 2)."""
    if backend != "ssh":
        return DEFAULT_WORKERS
    from distpar.hosts import resolve_hosts

    specs = resolve_hosts(backend_options["hosts"], backend_options["hosts_file"])
    return sum(s.slots if s.slots is not None else 2 for s in specs)


def _backend_options(backend: str, ray_address: str | None, hosts: str | None, hosts_file: Path | None,
                     identity: Path | None, accept_unknown_hosts: bool) -> dict[str, Any]:
    ssh_given = [n for n, v in (("--hosts", hosts), ("--hosts-file", hosts_file), ("--identity", identity),
                                ("--accept-unknown-hosts", accept_unknown_hosts)) if v]
    if backend != "ssh" and ssh_given:
        raise UsageError(f"{ssh_given[0]} goes with --backend ssh")
    if backend != "ray" and ray_address:
        raise UsageError("--ray-address goes with --backend ray")
    if backend == "ray":
        return {"address": ray_address}
    if backend == "ssh":
        if not hosts and not hosts_file:
            raise UsageError("--backend ssh needs --hosts H1,H2 or --hosts-file FILE")
        return {"hosts": [h.strip() for h in (hosts or "").split(",") if h.strip()], "hosts_file": hosts_file,
                "identity": identity, "accept_unknown_hosts": accept_unknown_hosts}
    return {}


def _print_totals(rows: list[tuple[int, float, float | None, int | None, int | None]]) -> None:
    """Agent time, cost and tokens per stream and for the run; rows: (stream, seconds, usd, in, out)."""
    def line(label: str, rs: list[tuple[int, float, float | None, int | None, int | None]]) -> str:
        costs = [r[2] for r in rs if r[2] is not None]
        tin, tout = sum(r[3] or 0 for r in rs), sum(r[4] or 0 for r in rs)
        return (f"  {label}: {len(rs)} batch(es), agent time {secs(sum(r[1] for r in rs))}"
                + (f", ${sum(costs):.4f}" if costs else "")
                + (f", tokens {tin} in / {tout} out" if tin or tout else ""))

    click.echo("totals:")
    for k in sorted({r[0] for r in rows}):
        click.echo(line(f"s{k + 1}", [r for r in rows if r[0] == k]))
    click.echo(line("run", rows))


def _print_report(report: Any, runner: Any) -> None:
    s = report.summary()
    counts = ", ".join(f"{n} {k}" for k, n in s["batches"].items())
    color = {"ok": "green", "failed": "red", "conflict": "yellow", "interrupted": "yellow", "error": "red"}
    click.secho(f"run {report.run_id}: {report.state} ({counts})", fg=color.get(report.state))
    cost = f", cost ${report.cost_usd:.4f}" if report.cost_usd is not None else ""
    tin, tout = report.tokens()
    tokens = f", tokens {tin} in / {tout} out" if tin or tout else ""
    click.echo(f"wall {report.wall:.1f}s, serial agent time {report.agent_time:.1f}s, "
               f"speedup {report.speedup:.2f}x{cost}{tokens}")
    if len({r.stream for r in report.results}) > 1:
        _print_totals([(r.stream, r.duration, r.outcome.cost_usd if r.outcome else None,
                        r.outcome.input_tokens if r.outcome else None,
                        r.outcome.output_tokens if r.outcome else None) for r in report.results])
    budget = report.budget()
    if budget:
        click.echo(f"budget ${budget['limit']:.4f}: spent ${budget['spent']:.4f}, left ${budget['left']:.4f}"
                   + (f"; spent before {len(report.pending)} batch(es) could start" if budget["exhausted"] else ""))
    for r in report.results:
        for note in r.notes:
            err(f"warning: batch {r.batch_id}: {note}", fg="yellow")
    for r in report.results:
        if r.status.value in ("failed", "timeout", "blocked"):
            click.echo(f"\nbatch {r.batch_id} (s{r.stream + 1}) {r.status.value}: {r.error}")
            if r.log_tail:
                click.echo("  " + "\n  ".join(r.log_tail.splitlines()[-10:]))
            if r.log_path:
                click.echo(f"  log: {r.log_path}")
    if report.conflict:
        c = report.conflict
        click.echo(f"\nmerge conflict ({c.stage}): {c.theirs} into {c.ours}"
                   + (f" (for batch {c.batch_id})" if c.batch_id else ""))
        for f in c.files:
            click.echo(f"  conflicting: {f}")
        click.echo(f"{report.target} was left unchanged; nothing was resolved automatically. To continue:")
        for cmd in c.commands:
            click.echo(f"  {cmd}")
    for e in report.errors:
        click.echo(f"error: {e}")
    if report.landed:
        click.echo(f"merged into {report.target} ({report.landed[:12]})")
    if report.pending:
        click.echo(f"not started: {', '.join(report.pending)}")
    if report.branches:
        click.echo("branches kept: " + ", ".join(report.branches))
    if report.saved_refs:
        click.echo("unfinished work saved on: " + ", ".join(report.saved_refs))


@cli.command("status")
@click.argument("run_id", required=False)
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--json", "as_json", is_flag=True)
def status_cmd(run_id: str | None, repo_path: Path, as_json: bool) -> None:
    """List runs, newest first, or show one run per stream and batch."""
    from distpar import runtime

    repo = gitops.repo_root(repo_path) if not os.environ.get("DISTPAR_HOME") else repo_path
    journal = runtime.open_journal(Path(repo))
    if run_id is None:
        rows = journal.runs()
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
            return
        if not rows:
            click.echo("no runs yet")
            return
        click.echo(f"{'RUN':<22} {'PLAN':<20} {'STARTED':<16} {'STATE':<12} {'BATCHES':<18} {'WALL':>8} "
                   f"{'SPEEDUP':>8} {'COST':>9}")
        for r in rows:
            summ = json.loads(r["summary"]) if r["summary"] else {}
            state, wall = _run_state(journal, r)
            speed = f"{summ['speedup']:.2f}x" if "speedup" in summ else "-"
            cost = f"${r['cost_usd']:.4f}" if r["cost_usd"] is not None else "-"
            counts = f"{r['n_ok']}/{r['n_batches']} ok" + (f", {r['n_failed']} failed" if r["n_failed"] else "")
            plan = Path(r["plan_path"]).name
            plan = plan if len(plan) <= 20 else plan[:19] + "~"
            click.echo(f"{r['id']:<22} {plan:<20} {_when(r['started']):<16} {state:<12} {counts:<18} "
                       f"{secs(wall):>8} {speed:>8} {cost:>9}")
        return
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    batches = journal.batches(run["id"])
    if as_json:
        click.echo(json.dumps({"run": run, "batches": batches}, indent=2, default=str))
        return
    summ = json.loads(run["summary"]) if run["summary"] else {}
    state, wall = _run_state(journal, run)
    agent_time = sum(b["ended"] - b["started"] for b in batches if b["ended"] and b["started"])
    costs = [b["cost_usd"] for b in batches if b["cost_usd"] is not None]
    click.echo(f"run {run['id']}: {state}")
    click.echo(f"  plan {run['plan_path']}" + (f" ({run['plan_id']})" if run["plan_id"] else "")
               + f"; backend {run['backend']}, {run['workers']} worker(s), strategy {run['strategy']}; "
               f"into {run['target']}")
    click.echo(f"  started {_when(run['started'])}; wall {secs(wall)}, serial agent time {secs(agent_time)}, "
               f"speedup {agent_time / wall if wall else 0:.2f}x; cost " + (f"${sum(costs):.4f}" if costs else "-"))
    click.echo(f"{'STREAM':<7} {'BATCH':<14} {'STATE':<12} {'RESULT':<16} {'NODE':<18} {'DURATION':>9} "
               f"{'COST':>9} {'ATTEMPT':>7}")
    for b in sorted(batches, key=lambda b: (b["stream"], b["position"])):
        dur = secs(b["ended"] - b["started"]) if b["ended"] and b["started"] else "-"
        cost = f"${b['cost_usd']:.4f}" if b["cost_usd"] is not None else "-"
        click.echo(f"s{b['stream'] + 1:<6} {b['batch_id']:<14} {b['state']:<12} {b['result_class'] or '-':<16} "
                   f"{b['node'] or '-':<18} {dur:>9} {cost:>9} {b['attempt'] or '-':>7}")
        if b["error"] and b["state"] != "ok":
            click.echo(f"{'':<8}{b['error']}")
    _print_totals([(b["stream"], (b["ended"] - b["started"]) if b["ended"] and b["started"] else 0.0,
                    b["cost_usd"], b["input_tokens"], b["output_tokens"]) for b in batches])
    conflict = summ.get("conflict")
    if conflict:
        click.echo(f"merge conflict ({conflict['stage']}): {conflict['theirs']} into {conflict['ours']}: "
                   + ", ".join(conflict["files"]))
    if summ.get("branches"):
        click.echo("branches kept: " + ", ".join(summ["branches"]))
    if summ.get("saved_refs"):
        click.echo("unfinished work saved on: " + ", ".join(summ["saved_refs"]))


def _run_state(journal: Any, run: dict[str, Any]) -> tuple[str, float]:
    """The state to show (``crashed`` for a run whose coordinator is gone) and its wall time so far."""
    from distpar.clean import run_is_live

    summ = json.loads(run["summary"]) if run["summary"] else {}
    if run["state"] != "running":
        return run["state"], float(summ.get("wall") or ((run["ended"] or run["started"]) - run["started"]))
    if run_is_live(journal, run):
        return "running", time.time() - run["started"]
    events = journal.events(run["id"])
    return "crashed", (events[-1].ts if events else run["started"]) - run["started"]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _open_journal(repo_path: Path) -> Any:
    """The journal of the repository at ``repo_path`` (or the one DISTPAR_HOME points to)."""
    from distpar import runtime

    repo = gitops.repo_root(repo_path) if not os.environ.get("DISTPAR_HOME") else repo_path
    return runtime.open_journal(Path(repo))


def _find_run(journal: Any, run_id: str) -> dict[str, Any]:
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    return dict(run)


@cli.command("logs")
@click.argument("run_id")
@click.option("--batch", "batch_id", default=None, metavar="ID", help="Only this batch's log.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing a running batch's log until the batch ends (bounded by its timeout).")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def logs_cmd(run_id: str, batch_id: str | None, follow: bool, repo_path: Path) -> None:
    """Print the agent logs of RUN_ID (every batch that ran, or one with --batch)."""
    from distpar import logs, runtime

    journal = _open_journal(repo_path)
    run = _find_run(journal, run_id)
    run_dir = runtime.state_dir(Path(run["repo"])) / "runs" / run["id"]
    rows = journal.batches(run["id"])
    if batch_id is not None:
        rows = [b for b in rows if b["batch_id"] == batch_id]
        if not rows:
            raise UsageError(f"run {run['id']} has no batch {batch_id!r}")
    if follow:
        row = rows[0] if batch_id is not None else logs.running_batch(rows, run_dir)
        if row is None:
            raise UsageError(f"run {run['id']} has no running batch to follow"
                             + ("" if run["state"] == "running" else f" (the run is {run['state']})"))
        for chunk in logs.follow(journal, run, row["batch_id"], run_dir):
            click.echo(chunk, nl=False)
        return
    shown = 0
    for b in rows:
        path = logs.log_path(b, run_dir)
        if path is None or not path.is_file():
            if batch_id is not None:
                why = "it has not started" if b["state"] in ("pending", "skipped", "blocked") else f"no file {path}"
                raise UsageError(f"batch {b['batch_id']} of run {run['id']} has no log: {why}")
            continue
        if len(rows) > 1:
            click.echo(f"{'' if shown == 0 else chr(10)}==> batch {b['batch_id']} (s{b['stream'] + 1}, {b['state']}): "
                       f"{path} <==")
        click.echo(path.read_text(errors="replace"), nl=False)
        shown += 1
    if not shown and batch_id is None:
        err(f"run {run['id']}: no batch has a log yet")


@cli.command("report")
@click.argument("run_id")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Write the report to this file (one self-contained page).")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def report_cmd(run_id: str, html_file: Path, repo_path: Path) -> None:
    """Write an HTML report of RUN_ID: timeline, dependency graph, durations, cost, failures and conflicts."""
    from distpar import report

    journal = _open_journal(repo_path)
    run = _find_run(journal, run_id)
    html_file.write_text(report.html_report(journal, run["id"]), encoding="utf-8")
    click.echo(f"wrote {html_file}")


@cli.command("clean")
@click.argument("run_id", required=False)
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed and what kept.")
@click.option("--force", is_flag=True, help="Also remove branches, refs and worktrees holding unmerged work.")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def clean_cmd(run_id: str | None, dry_run: bool, force: bool, repo_path: Path) -> None:
    """Remove what finished runs left (worktrees, branches, refs, logs) and sweep what crashed runs orphaned.

    Live runs are never touched; work not merged into a run's target is kept unless --force."""
    from distpar import clean, runtime

    repo = gitops.repo_root(repo_path)
    journal = runtime.open_journal(repo)
    items = clean.plan_clean(repo, runtime.state_dir(repo), journal, run_id, force)
    if not items:
        click.echo("nothing to clean")
        return
    verb = {"remove": "remove", "kill": "kill", "keep": "keep"}
    for it in items:
        action = ("would " if dry_run and it.removes else "") + verb[it.action]
        click.echo(f"{action:<12} {it.kind:<9} {it.name}  ({it.reason})")
    if dry_run:
        return
    failures = clean.apply_clean(repo, items, journal)
    for it, why in failures:
        err(f"could not remove {it.kind} {it.name}: {why}", fg="red")
    removed = sum(1 for i in items if i.removes) - len(failures)
    kept = sum(1 for i in items if not i.removes)
    click.echo(f"removed {removed}, kept {kept}" + (f", {len(failures)} failed" if failures else ""))
    if failures:
        sys.exit(int(ExitCode.BACKEND))


@cli.command("agents")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=agents.VERSION_TIMEOUT,
              show_default=True, help="Seconds to wait for each CLI's --version.")
@click.option("--json", "as_json", is_flag=True)
def agents_cmd(timeout: float, as_json: bool) -> None:
    """List the agent presets: whether each CLI is installed here, its version, and the API key variables it
    reads (names only; $DISTPAR_AGENT_<PRESET>_BIN overrides the command)."""
    probes = [agents.probe(name, timeout=timeout) for name in agents.PRESETS]
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in probes], indent=2))
        return
    click.echo(f"{'PRESET':<8} {'INSTALLED':<10} {'VERSION':<40} KEY VARIABLES (set here)")
    for p in probes:
        installed = "yes" if p.version else ("broken" if p.path else "no")
        keys = ", ".join(k + (" (set)" if k in p.keys_set else "") for k in p.key_vars) or "-"
        version = (p.version or "-")[:40]
        click.echo(f"{p.name:<8} {installed:<10} {version:<40} {keys}")
        click.echo(f"{'':<8} {' '.join(p.command)}: {p.description}" + (f"; {p.error}" if p.error else ""))


if __name__ == "__main__":
    main()
