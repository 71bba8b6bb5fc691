"""``distpar mcp``: registered through the ``distpar.commands`` entry point (the CLI does not import this layer)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("mcp")
@click.option("--http", "http_bind", default=None, metavar="HOST:PORT",
              help="Serve streamable HTTP on HOST:PORT instead of stdio (an address beyond loopback needs a token).")
@click.option("--token-env", default="DISTPAR_MCP_TOKEN", show_default=True, metavar="NAME",
              help="With --http: the environment variable holding the bearer token clients must send.")
@click.option("--allow-repo", multiple=True, type=click.Path(file_okay=False, path_type=Path), metavar="PATH",
              help="Repositories the tools may use: under PATH (repeatable; default: the working directory).")
def mcp_cmd(http_bind: str | None, token_env: str, allow_repo: tuple[Path, ...]) -> None:
    """Serve distpar's tools (plan, run, status, logs, resume, cancel) to agents over the Model Context Protocol."""
    from distpar.mcp.server import serve

    serve(http_bind, token_env, allow_repo)
