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

from distpar import __version__, agents
from distpar.backends import backend_names
from distpar.cli import inspect
from distpar.cli import review as review_cli
from distpar.cli.options import given_options, run_option_flags
from distpar.cli.output import err, print_totals
from distpar.coordinator.options import DEFAULT_WORKERS
from distpar.core.errors import DistparError, ExitCode, UsageError
from distpar.core.model import AgentConfig, bounded_tail, worker_label
from distpar.core.plan import Plan, load_plan, parse_plan
from distpar.core.schedule import Schedule, SubagentHow, make_schedule, predict, preview, subagent_not_passed
from distpar.core.units import STRATEGIES, UnitGraph, unit_graph
from distpar.infra import gitops

log = logging.getLogger("distpar")




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
    f = click.option("--independent", is_flag=True,
                     help="The batches do not need each other (the seed's assumption): no stage order.")(f)
    f = click.option("--split", type=int, default=None, help="Cut after batch K (implies --strategy midpoint).")(f)
    f = click.option("--strategy", type=click.Choice(STRATEGIES), default="balanced", show_default=True,
                     help="How the units are spread over the workers.")(f)
    f = click.option("-w", "--workers", type=click.IntRange(min=1), default=None,
                     help="Number of parallel workers [default: 4; with --backend ssh, the hosts' slots].")(f)
    return f


@cli.command("plan")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@_schedule_options
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Repository the plan runs in (for the path checks; default: the current directory).")
@click.option("--suggest-deps", is_flag=True,
              help="Ask the agent which batches need which; print the plan with depends_on added.")
@click.option("--write", is_flag=True, help="With --suggest-deps: write the depends_on into PLAN_FILE.")
@click.option("--agent", "agent_name", default="claude", show_default=True,
              help="With --suggest-deps: the agent to ask (claude, or fake for tests).")
@click.option("--model", default=None, help="With --suggest-deps: the model.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --suggest-deps: seconds to wait for the answer (default 600).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_cmd(plan_file: Path, workers: int, strategy: str, split: int | None, independent: bool, repo_path: Path,
             suggest_deps: bool, write: bool, agent_name: str, model: str | None, timeout: float | None,
             as_json: bool) -> None:
    """Show how PLAN_FILE would run: the ordering rule, the units, the predicted timeline. Changes nothing
    (except PLAN_FILE with --suggest-deps --write)."""
    plan = load_plan(plan_file)
    workers = workers or DEFAULT_WORKERS
    repo_root = _repo_root_or_none(repo_path)
    if suggest_deps:
        workdir = Path(repo_root) if repo_root else repo_path
        _suggest_deps(plan, plan_file, workers, workdir, agent_name, model, timeout, write, as_json)
        return
    for option, given in (("--write", write), ("--model", model), ("--timeout", timeout)):
        if given:
            raise UsageError(f"{option} goes with --suggest-deps")
    graph = unit_graph(plan, independent=independent, strategy=strategy, split=split)
    schedule = make_schedule(plan, workers, strategy, split)
    cfg = agents.agent_config(agent_name, AgentConfig())
    _print_schedule(plan, graph, schedule, as_json, repo_root=repo_root, plan_path=str(plan_file.resolve()),
                    subagent=agents.subagent_how(cfg, repo_root))


NOTHING_TO_RUN = "nothing to run: no batch has an agent (agents: [] everywhere)"


def _repo_root_or_none(path: Path) -> str | None:
    try:
        return str(gitops.repo_root(path))
    except DistparError:
        return None


def _print_schedule(plan: Plan, graph: UnitGraph, schedule: Schedule, as_json: bool, *,
                    repo_root: str | None = None, plan_path: str | None = None,
                    subagent: SubagentHow = subagent_not_passed) -> None:
    """The dry run: ordering rule and why, units per batch and what each waits for, the predicted timeline,
    the documented fields distpar accepts without acting on them; warnings on stderr."""
    pv = preview(graph, schedule.workers, strategy=schedule.strategy, repo_root=repo_root, plan_path=plan_path,
                 subagent=subagent)
    p = pv.prediction
    warnings = [*plan.warnings, *pv.warnings()]
    if as_json:
        click.echo(json.dumps({"plan_id": plan.plan_id, "source": plan.source, "batches": len(plan.batches),
                               "units": len(graph.units), "nothing_to_run": not graph.units,
                               "rule": graph.rule, "why": graph.why,
                               "target_branch": plan.target_branch, "preview": pv.to_dict(),
                               "schedule": schedule.to_dict(), "warnings": warnings}, indent=2))
        return
    click.echo(f"plan {plan.plan_id or '(no id)'} ({plan.source}): {len(plan.batches)} batches, "
               f"{len(graph.units)} units, {p.workers} worker(s)")
    click.echo(f"order: {graph.rule}: {graph.why}")
    for b in plan.batches:
        units = graph.of_batch(b.id)
        mode = "fan-out" if b.type == "fan-out" else ("parallel" if b.concurrent else "sequential")
        head = f"  batch {b.id}" + (f" ({mode}, {len(units)} units)" if len(units) > 1 else "")
        if not units:
            click.echo(f"{head}: skipped (no agents)")
            continue
        parts = []
        for u in units:
            label = f"{u.uid} ({u.estimate:g}m)"
            if u.depends_on:
                label += " after " + ", ".join(u.depends_on)
            parts.append(label)
        extra = f"; verifies {', '.join(b.verify_files)}" if b.verify_files else ""
        click.echo(f"{head}: " + "; ".join(parts) + extra)
    if not graph.units:
        click.echo(NOTHING_TO_RUN)
        for warning in warnings:
            err(f"warning: {warning}", fg="yellow")
        return
    click.echo("predicted timeline (minutes):")
    for k, row in enumerate(p.timeline()):
        cells = [f"{s.uid} {s.start:g}-{s.finish:g}" for s in row]
        click.echo(f"  w{k + 1}: " + (" -> ".join(cells) if cells else "(idle)"))
    click.echo(
        f"estimated makespan {p.makespan:g} min, serial {p.serial:g} min, predicted speedup {p.speedup:.2f}x; "
        f"lower bound {p.lower_bound:g} min (critical path {p.critical_path:g}, work/N {p.serial / p.workers:g})"
    )
    by_how: dict[str, list[str]] = {}
    for name, how in pv.subagents.items():
        by_how.setdefault(how, []).append(name)
    for how, group in by_how.items():
        click.echo(f"subagent_type {', '.join(group)}: {how}")
    for line in _accepted_fields(plan):
        click.echo(line)
    for warning in warnings:
        err(f"warning: {warning}", fg="yellow")


def _accepted_fields(plan: Plan) -> list[str]:
    """What distpar does with the CAST fields it accepts but does not act on (yet)."""
    out = []
    if plan.target_branch:
        out.append(f"target_branch {plan.target_branch}: the branch the work lands on (the default for --into)")
    if plan.pre_approved:
        out.append("pre_approved: accepted; distpar never waits for an approval")
    repos = sorted({r for b in plan.batches for r in (*b.commit_repos, *(x for a in b.agents for x in a.commit_repos))})
    if repos:
        out.append(f"commit_repos ({', '.join(repos)}): accepted; distpar commits what each agent changes in its "
                   "worktree of this repository, and nothing in other repositories")
    return out


def _suggest_deps(plan: Plan, plan_file: Path, workers: int, workdir: Path, agent_name: str, model: str | None,
                  timeout: float | None, write: bool, as_json: bool) -> None:
    from distpar.agents import suggest

    cfg = agents.agent_config(agent_name, AgentConfig(preset="claude", model=model))
    err(f"asking the {cfg.preset} agent which batches need which ...")
    answer = suggest.ask(plan, cfg, workdir, timeout=timeout or suggest.TIMEOUT)
    text = suggest.apply(plan_file.read_bytes().decode("utf-8"), plan, answer)  # line endings as they are
    after = parse_plan(text, str(plan_file))
    before_p = predict(unit_graph(plan), workers)
    after_p = predict(unit_graph(after), workers)
    if as_json:
        click.echo(json.dumps({"depends_on": answer.depends_on, "reasons": answer.reasons, "notes": list(answer.notes),
                               "speedup_before": before_p.speedup, "speedup_after": after_p.speedup,
                               "makespan_before": before_p.makespan, "makespan_after": after_p.makespan,
                               "cost_usd": answer.cost_usd, "written": write}, indent=2))
    elif not write:
        click.echo(text, nl=False)
    for bid, deps in answer.depends_on.items():
        reason = answer.reasons.get(bid)
        err(f"  batch {bid}: depends_on [{', '.join(deps)}]" + (f" ({reason})" if reason else ""))
    for note in answer.notes:
        err(f"note: {note}", fg="yellow")
    err(f"predicted speedup with {workers} worker(s): {before_p.speedup:.2f}x as stages ({before_p.makespan:g} min), "
        f"{after_p.speedup:.2f}x with these depends_on ({after_p.makespan:g} min)"
        + (f"; the agent cost ${answer.cost_usd:.4f}" if answer.cost_usd is not None else ""))
    if write:
        tmp = plan_file.with_name(f".{plan_file.name}.distpar-tmp")
        tmp.write_bytes(text.encode("utf-8"))
        os.replace(tmp, plan_file)
        err(f"wrote depends_on into {plan_file}")


@cli.command("run")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@_schedule_options
@click.option("--backend", type=click.Choice(backend_names()), default="local", show_default=True)
@click.option("--agent", "agent_name", default="claude", show_default=True,
              help=f"Agent preset ({', '.join(agents.preset_names())}) or a command template.")
@click.option("--agent-cmd", default=None, metavar="TEMPLATE",
              help="Custom agent command; placeholders: " + ", ".join("{" + p + "}" for p in agents.PLACEHOLDERS))
@click.option("--model", default=None, help="Model passed to the agent.")
@click.option("--max-turns", type=click.IntRange(min=1), default=None, help="Per unit.")
@click.option("--max-budget-usd", type=click.FloatRange(min=0, min_open=True), default=None, help="Per unit.")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop an agent that prints nothing for this long (class stalled, retried like a 5xx); "
                   "default: off (claude's json output comes only at the end).")
@click.option("--stream-json", is_flag=True,
              help="Agents that can (claude, gemini) log a live JSON event stream instead of one final result.")
@run_option_flags()
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Repository to work on (default: the current directory).")
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
@click.option("--run-id", default=None, hidden=True, help="The run's id (distpar mcp chooses it).")
@click.option("--check-only", is_flag=True, hidden=True, help="Every check a run makes before it starts, then stop.")
def run_cmd(plan_file: Path, workers: int | None, strategy: str, split: int | None, independent: bool, backend: str,
            agent_name: str, agent_cmd: str | None, model: str | None, max_turns: int | None,
            max_budget_usd: float | None, stall_timeout: float | None, stream_json: bool, repo_path: Path,
            ray_address: str | None, hosts: str | None, hosts_file: Path | None, identity: Path | None,
            accept_unknown_hosts: bool, dry_run: bool, as_json: bool, quiet: bool, run_id: str | None,
            check_only: bool, **declared: Any) -> None:
    """Run PLAN_FILE: run an agent per unit on free workers, merge the units in plan order, land the result."""
    from distpar.coordinator.options import RunOptions
    from distpar.coordinator.prepare import check_run, plan_warnings, prepare_run

    plan = load_plan(plan_file)
    if not any(b.agents for b in plan.batches) and not dry_run:  # a valid plan; nothing runs, nothing changes
        click.echo(json.dumps({"run_id": None, "state": "ok", "nothing_to_run": True, "exit_code": 0,
                               "batches": {"skipped": len(plan.batches)}})
                   if as_json else NOTHING_TO_RUN + "; nothing was changed")
        return
    given = given_options(declared)
    base_cfg = AgentConfig(preset="claude", model=model, max_turns=max_turns, max_budget_usd=max_budget_usd,
                           stream=stream_json, stall_timeout=stall_timeout)
    if agent_cmd:
        agent = agents.agent_config(agent_cmd if ("{" in agent_cmd or " " in agent_cmd) else agent_cmd + " {prompt}",
                                    base_cfg)
    else:
        agent = agents.agent_config(agent_name, base_cfg)
    backend_options = _backend_options(backend, ray_address, hosts, hosts_file, identity, accept_unknown_hosts)
    options = RunOptions(agent=agent, backend=backend, backend_options=backend_options, independent=independent,
                         split=split, **given)
    if dry_run:
        for warning in plan_warnings(plan, options):
            err(f"warning: {warning}", fg="yellow")
        from distpar.coordinator.prepare import default_workers

        schedule = make_schedule(plan, workers or default_workers(backend, backend_options), strategy, split)
        graph = unit_graph(plan, independent=independent, strategy=strategy, split=split)
        root = _repo_root_or_none(repo_path)
        _print_schedule(plan, graph, schedule, as_json, repo_root=root, plan_path=str(plan_file.resolve()),
                        subagent=agents.subagent_how(agent, root))
        return
    if check_only:  # every check a run makes, nothing started (distpar mcp)
        for warning in check_run(plan_file, options, repo=repo_path, workers=workers, strategy=strategy,
                                 given=set(given), plan=plan).warnings:
            err(f"warning: {warning}", fg="yellow")
        return
    prepared = prepare_run(plan_file, options, repo=repo_path, workers=workers, strategy=strategy,
                           given=set(given), plan=plan, run_id=run_id)
    for warning in prepared.warnings:
        err(f"warning: {warning}", fg="yellow")
    _run_and_exit(prepared, as_json, quiet)


def _run_and_exit(prepared: Any, as_json: bool, quiet: bool) -> None:
    runner = prepared.runner
    report = _observe_run(prepared, as_json, quiet)
    notices = list(getattr(prepared.journal, "notices", ()))  # the journal file removed or replaced during the run
    if as_json:
        summary = report.summary()
        if notices:
            summary["journal_notices"] = notices
        click.echo(json.dumps(summary))  # the last JSON line: the run's summary
    else:
        _print_report(report, runner)
        for note in notices:
            err(f"warning: {note}", fg="yellow")
    sys.exit(int(report.exit_code))


def _observe_run(prepared: Any, as_json: bool, quiet: bool) -> Any:
    """Run ``prepared`` with the right observer: JSON lines of events on stdout (--json), nothing (-q), a live
    view on a terminal, plain lines on stderr otherwise."""
    from rich.console import Console

    from distpar.ops import live
    from distpar.worker.common import node_name

    observer: live.Observer
    if as_json:
        observer = live.Observer() if quiet else live.JsonLines(click.echo)
    elif quiet:
        observer = live.Observer()
    else:
        console = Console(stderr=True)
        runner = prepared.runner
        progress = live.RunProgress(runner.plan, runner.schedule, "" if runner.backend.remote else node_name(),
                                    graph=runner.graph)
        if console.is_terminal and not console.is_dumb_terminal:
            observer = live.LiveView(console, progress)
        else:
            observer = live.PlainLines(console, progress)
    prepared.runner.observer = observer
    with observer:
        return prepared.run()


@cli.command("resume")
@click.argument("run_id")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@run_option_flags(resume=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def resume_cmd(run_id: str, repo_path: Path, as_json: bool, quiet: bool, **declared: Any) -> None:
    """Continue a run that was interrupted, failed, or stopped at a conflict you have resolved.

    Finished units are never run again; interrupted, failed and never-started ones run from the merge of their
    dependencies; the merge continues from where it stopped. The flags below override the run's own."""
    from distpar.coordinator.prepare import prepare_resume

    prepared = prepare_resume(gitops.repo_root(repo_path), run_id, **given_options(declared))
    _run_and_exit(prepared, as_json, quiet)


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


def _print_report(report: Any, runner: Any) -> None:
    s = report.summary()
    counts = ", ".join(f"{n} {k}" for k, n in s["units"].items())
    color = {"ok": "green", "failed": "red", "conflict": "yellow", "interrupted": "yellow", "error": "red",
             "gate_failed": "red", "review": "cyan"}
    click.secho(f"run {report.run_id}: {report.state} ({counts})", fg=color.get(report.state))
    cost = f", cost ${report.cost_usd:.4f}" if report.cost_usd is not None else ""
    tin, tout = report.tokens()
    tokens = f", tokens {tin} in / {tout} out" if tin or tout else ""
    click.echo(f"wall {report.wall:.1f}s, serial agent time {report.agent_time:.1f}s, "
               f"speedup {report.speedup:.2f}x{cost}{tokens}")
    if len({r.worker for r in report.results}) > 1:
        print_totals([(r.worker, r.duration, r.outcome.cost_usd if r.outcome else None,
                        r.outcome.input_tokens if r.outcome else None,
                        r.outcome.output_tokens if r.outcome else None) for r in report.results])
    budget = report.budget()
    if budget:
        click.echo(f"budget ${budget['limit']:.4f}: spent ${budget['spent']:.4f}, left ${budget['left']:.4f}"
                   + (f"; spent before {len(report.pending)} unit(s) could start" if budget["exhausted"] else ""))
    for r in report.results:
        for note in r.notes:
            err(f"warning: batch {r.unit_id}: {note}", fg="yellow")
    for r in report.results:
        if r.status.value in ("failed", "timeout", "blocked"):
            click.echo(f"\nbatch {r.unit_id} ({worker_label(r.worker)}) {r.status.value}: "
                       f"{bounded_tail(r.error, lines=10)}")
            if r.log_tail:
                click.echo("  " + "\n  ".join(bounded_tail(r.log_tail, lines=10).splitlines()))
            if r.log_path:
                click.echo(f"  log: {r.log_path}")
    if report.conflict:
        c = report.conflict
        click.echo(f"\nmerge conflict ({c.stage}): {c.theirs} into {c.ours}"
                   + (f" (for unit {c.unit_id})" if c.unit_id else ""))
        for f in c.files:
            click.echo(f"  conflicting: {f}")
        click.echo(f"{report.target} was left unchanged; nothing was resolved automatically. To continue:")
        for cmd in c.commands:
            click.echo(f"  {cmd}")
    for p in report.predicted_conflicts:
        others = f" with {', '.join(p['with'])}" if p["with"] else ""
        if not p.get("rerun"):
            click.echo(f"conflict found early: {p['unit']}{others} in {', '.join(p['files'])}")
    for q in report.reruns:
        click.echo(f"rerun {q['count']} of {q['unit']} (the merge queue): {q['reason']}; earlier try on "
                   f"{q['saved_ref']}")
    for r in report.resolutions:
        what = "resolved by the agent" if r["ok"] else f"NOT resolved: {r['why']}"
        click.echo(f"\nconflict of {', '.join(r['units'])} in {', '.join(r['files'])}: {what}"
                   + (f" (kept on {r['ref']})" if r["ref"] else ""))
        if r["diff"]:
            click.echo("  " + "\n  ".join(r["diff"].splitlines()[:40]))
    if report.gate:
        g = report.gate
        click.echo(f"\nthe merged tree failed --verify-merged ({g['name']}, exit {g['exit_code']}):")
        click.echo("  " + "\n  ".join(g["tail"].splitlines()[-10:]))
        click.echo(f"  log: {g['log_path']}")
        b = report.bisected
        if b:
            how = "checked after every merge" if b["each"] else f"bisected in {b['runs']} run(s) of the check"
            click.echo(f"{b['description']} ({how}); the check there:")
            click.echo("  " + "\n  ".join(b["tail"].splitlines()[-10:]))
            click.echo(f"  log: {b['log_path']}")
        click.echo(f"{report.target} was left unchanged; the merged work is on {runner.integration}. Fix it there "
                   f"(commit on that branch), then: distpar resume {report.run_id}")
    for f in report.fixes:
        click.echo(f"fix unit {f['unit']} ({f['status']}): " + (f"committed {str(f['commit'])[:12]} on {f['branch']}"
                                                               if f.get("commit") else f"{f.get('error')}"))
    for e in report.errors:
        click.echo(f"error: {e}")
    if report.pushed:
        click.echo(f"pushed to {runner.options.push}: " + ", ".join(report.pushed))
    if report.landed:
        click.echo(f"merged into {report.target} ({report.landed[:12]})")
    if report.stopped:
        click.echo(f"stopped starting units: {report.stopped}; distpar resume {report.run_id} once it has reset")
    if report.pending:
        click.echo(f"not started: {', '.join(report.pending)}")
    if report.branches:
        click.echo("branches kept: " + ", ".join(report.branches))
    if report.saved_refs and report.landed:  # every unit succeeded in the end: what was saved was superseded
        click.echo("earlier attempts' work (superseded; distpar clean removes it) saved on: "
                   + ", ".join(report.saved_refs))
    elif report.saved_refs:
        click.echo("unfinished work saved on: " + ", ".join(report.saved_refs))
    line = _resume_line(report)
    if line:
        click.echo(line)


def _resume_line(report: Any) -> str:
    """How to go on, for every resumable end that has not printed it already (a conflict and a failed gate
    print their own, with the commands before it; so does a usage limit)."""
    if report.review:
        return (f"integrated and gated on distpar/{report.run_id}/integration ({report.review[:12]}); "
                f"{report.target} untouched. Review: distpar diff {report.run_id} [UNIT]; then land: "
                f"distpar land {report.run_id} [--without UNIT...]")
    if report.landed or report.conflict or report.gate or report.stopped:
        return ""
    if report.state == "interrupted":
        return f"interrupted; to go on where it stopped: distpar resume {report.run_id}"
    if report.state == "failed" and report.budget_exhausted:
        return f"budget spent; to go on: distpar resume {report.run_id}"
    if report.state == "failed" and report.predicted_conflicts and report.pending:
        return f"stopped at the conflict found early; to go on: distpar resume {report.run_id}"
    if report.state in ("failed", "error"):
        return f"fix what failed (above), then: distpar resume {report.run_id}"
    return ""


for _cmd in (inspect.status_cmd, inspect.logs_cmd, inspect.report_cmd, inspect.clean_cmd, inspect.init_cmd,
             inspect.agents_cmd):
    cli.add_command(_cmd)


def _plugin_commands() -> None:
    """Commands of the ``distpar.commands`` entry-point group (``distpar mcp`` is one), registered like a plugin's:
    the CLI never imports what is built on top of it."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="distpar.commands"):
        if ep.name not in cli.commands:
            cli.add_command(ep.load(), ep.name)


cli.add_command(review_cli.diff_cmd)
cli.add_command(review_cli.land_cmd)
_plugin_commands()

if __name__ == "__main__":
    main()
