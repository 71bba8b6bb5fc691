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
    f = click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Number of parallel streams.")(f)
    return f


@cli.command("plan")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@_schedule_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_cmd(plan_file: Path, workers: int, strategy: str, split: int | None, as_json: bool) -> None:
    """Show how PLAN_FILE would be scheduled. Changes nothing."""
    plan = load_plan(plan_file)
    schedule = make_schedule(plan, workers, strategy, split)
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
@click.option("--forward-env", multiple=True, metavar="NAME", help="Environment variable passed to agents.")
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
@click.option("--dry-run", is_flag=True, help="Show the schedule and stop.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (or the schedule) as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def run_cmd(plan_file: Path, workers: int, strategy: str, split: int | None, backend: str, agent_name: str,
            agent_cmd: str | None, model: str | None, max_turns: int | None, max_budget_usd: float | None,
            timeout: float | None, into: str | None, allow_dirty: bool, keep_branches: bool, retries: int,
            forward_env: tuple[str, ...], repo_path: Path, repo_url: str | None, ray_address: str | None,
            hosts: str | None, hosts_file: Path | None, identity: Path | None, accept_unknown_hosts: bool,
            dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Run PLAN_FILE: schedule its batches into streams, run an agent per batch, merge the streams."""
    from distpar import runtime
    from distpar.backends import make_backend

    plan = load_plan(plan_file)
    schedule = make_schedule(plan, workers, strategy, split)
    base_cfg = AgentConfig(preset="claude", model=model, max_turns=max_turns, max_budget_usd=max_budget_usd)
    if agent_cmd:
        agent = agents.agent_config(agent_cmd if ("{" in agent_cmd or " " in agent_cmd) else agent_cmd + " {prompt}",
                                    base_cfg)
    else:
        agent = agents.agent_config(agent_name, base_cfg)
    agents.check_plan_agents(plan, agent)
    if dry_run:
        _print_schedule(plan, schedule, as_json)
        return
    backend_options = _backend_options(backend, ray_address, hosts, hosts_file, identity, accept_unknown_hosts)
    if repo_url and backend == "local":
        raise UsageError("--repo-url goes with a remote backend (--backend ray or ssh)")
    options = runtime.RunOptions(
        agent=agent, timeout=timeout or runtime.DEFAULT_TIMEOUT, into=into, allow_dirty=allow_dirty,
        keep_branches=keep_branches, retries=retries, forward_env=forward_env, backend=backend,
        plan_path=str(plan_file.resolve()), repo_url=repo_url, backend_options=backend_options,
    )
    repo, target, start = runtime.preflight(repo_path, options)
    backend_obj = make_backend(backend, backend_options)
    journal = runtime.open_journal(repo)
    observer = None if quiet else _progress_printer()
    runner = runtime.Runner(repo, plan, schedule, options, backend_obj, journal, target, start, observer)
    report = runner.run()
    journal.close()
    if as_json:
        click.echo(json.dumps(report.summary(), indent=2))
    else:
        _print_report(report, runner)
    sys.exit(int(report.exit_code))


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
    runner = runtime.resume_runner(repo, journal, run_id, None if quiet else _progress_printer(), retries, timeout)
    report = runner.run()
    journal.close()
    if as_json:
        click.echo(json.dumps(report.summary(), indent=2))
    else:
        _print_report(report, runner)
    sys.exit(int(report.exit_code))


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


def _progress_printer() -> Any:
    def observe(kind: str, data: dict[str, Any]) -> None:
        if kind == "run_started":
            err(f"distpar: run {data['run_id']}: {data['streams']} stream(s), merging into {data['target']}")
        elif kind == "segment_submitted":
            err(f"[s{data['stream'] + 1}] started batch(es) {', '.join(data['batches'])}"
                + (f" (attempt {data['attempt']})" if data["attempt"] > 1 else ""))
        elif kind == "batch_ended":
            cost = f", ${data['cost_usd']:.4f}" if data.get("cost_usd") is not None else ""
            note = "" if data["status"] == "ok" else f": {data['error']}"
            change = "" if data["changed"] or data["status"] != "ok" else ", no changes"
            err(f"[s{data['stream'] + 1}] batch {data['batch']} {data['status']} "
                f"({data['duration']:.1f}s{cost}{change}){note}")
        elif kind == "segment_retry":
            err(f"[s{data['stream'] + 1}] retrying (attempt {data['attempt']}): {data['error']}")
        elif kind == "merge_started":
            err(f"distpar: merging {len(data['streams'])} stream(s) in order")
        elif kind == "run_resumed":
            err(f"distpar: resuming run {data['run_id']}: {data['done']} batch(es) already done"
                + (f" (recovered from their branches: {', '.join(data['recovered'])})" if data["recovered"] else ""))
        elif kind == "interrupted":
            err("distpar: interrupted: stopping agents and saving their work ...", fg="yellow")

    return observe


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
        click.echo(f"{'RUN':<22} {'STATE':<12} {'BATCHES':<14} {'WALL':>8} {'SPEEDUP':>8} {'COST':>9}  PLAN")
        for r in rows:
            summ = json.loads(r["summary"]) if r["summary"] else {}
            wall = f"{summ['wall']:.1f}s" if "wall" in summ else "-"
            speed = f"{summ['speedup']:.2f}x" if "speedup" in summ else "-"
            cost = f"${r['cost_usd']:.4f}" if r["cost_usd"] is not None else "-"
            batches = f"{r['n_ok']}/{r['n_batches']} ok" + (f", {r['n_failed']} bad" if r["n_failed"] else "")
            click.echo(f"{r['id']:<22} {r['state']:<12} {batches:<14} {wall:>8} {speed:>8} {cost:>9}  "
                       f"{r['plan_path']}")
        return
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    batches = journal.batches(run["id"])
    if as_json:
        click.echo(json.dumps({"run": run, "batches": batches}, indent=2, default=str))
        return
    click.echo(f"run {run['id']}: {run['state']} (plan {run['plan_path']}, backend {run['backend']}, "
               f"{run['workers']} worker(s), into {run['target']})")
    by_stream: dict[int, list[dict[str, Any]]] = {}
    for b in batches:
        by_stream.setdefault(b["stream"], []).append(b)
    for k in sorted(by_stream):
        rows = by_stream[k]
        cost = sum(b["cost_usd"] or 0 for b in rows)
        click.echo(f"  s{k + 1} ({len(rows)} batches, ${cost:.4f}):")
        for b in rows:
            dur = f"{b['ended'] - b['started']:.1f}s" if b["ended"] and b["started"] else "-"
            extra = f" [{b['result_class']}]" if b["result_class"] else ""
            node = f" on {b['node']}" if b["node"] else ""
            click.echo(f"    {b['batch_id']:<12} {b['state']:<12} {dur:>8}{node}{extra}"
                       + (f"  {b['error']}" if b["error"] and b["state"] != "ok" else ""))
    nodes = {b["node"] for b in batches if b["node"]}
    if nodes:
        click.echo(f"  nodes: {', '.join(sorted(nodes))}")


if __name__ == "__main__":
    main()
