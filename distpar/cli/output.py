"""What the command line prints that several commands share (stderr lines, the cost and token totals)."""

from __future__ import annotations

from typing import Any

import click

from distpar.core.model import worker_label
from distpar.ops.report import secs


def err(text: str = "", **style: Any) -> None:
    click.secho(text, err=True, **style)


def print_totals(rows: list[tuple[int, float, float | None, int | None, int | None]]) -> None:
    """Agent time, cost and tokens per worker and for the run; rows: (worker, seconds, usd, in, out)."""
    def line(label: str, rs: list[tuple[int, float, float | None, int | None, int | None]]) -> str:
        costs = [r[2] for r in rs if r[2] is not None]
        tin, tout = sum(r[3] or 0 for r in rs), sum(r[4] or 0 for r in rs)
        return (f"  {label}: {len(rs)} unit(s), agent time {secs(sum(r[1] for r in rs))}"
                + (f", ${sum(costs):.4f}" if costs else "")
                + (f", tokens {tin} in / {tout} out" if tin or tout else ""))

    click.echo("totals:")
    for k in sorted({r[0] for r in rows}):
        click.echo(line(worker_label(k), [r for r in rows if r[0] == k]))
    click.echo(line("run", rows))
