"""``distpar mcp --http``: loopback through the SDK's streamable HTTP client; beyond loopback only with a token;
a missing or wrong token gets 401."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import wait_for
from tests.mcp.conftest import data

pytestmark = pytest.mark.integration

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


@contextlib.contextmanager
def http_server(repo: Path, bind: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """``distpar mcp --http BIND`` in ``repo`` until the block ends; yields the file its stderr goes to."""
    errfile = repo.parent / f"mcp-{bind.replace(':', '_')}.err"
    with errfile.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "distpar", "mcp", "--http", bind], cwd=repo,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, **(env or {})})
    try:
        _host, port = bind.rsplit(":", 1)
        wait_for(lambda: proc.poll() is not None or _listening("127.0.0.1", int(port)), 30, "the server to listen")
        assert proc.poll() is None, errfile.read_text()
        yield errfile
        assert proc.poll() is None, errfile.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def post(url: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(INIT).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_loopback_through_the_sdk_client(repo: Path) -> None:
    port = free_port()
    with http_server(repo, f"127.0.0.1:{port}"):
        async def main() -> tuple[set[str], dict[str, object]]:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write), \
                    ClientSession(read, write) as s:
                await s.initialize()
                names = {t.name for t in (await s.list_tools()).tools}
                return names, data(await s.call_tool("status", {}))

        names, status = anyio.run(main)
    assert names == {"plan", "run", "status", "logs", "resume", "cancel"}
    assert status == {"run": None, "runs": []}


def test_beyond_loopback_without_a_token_is_refused(repo: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISTPAR_MCP_TOKEN"}
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "distpar", "mcp", "--http", f"0.0.0.0:{port}"], cwd=repo,
                         capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == (
        f"Error: --http 0.0.0.0:{port}: listening beyond loopback needs a bearer token, and $DISTPAR_MCP_TOKEN "
        "is not set")
    assert not _listening("127.0.0.1", port)
    named = subprocess.run([sys.executable, "-m", "distpar", "mcp", "--http", "10.1.2.3:9", "--token-env",
                            "MY_MCP_TOKEN"], cwd=repo, capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
    assert named.returncode == 2 and "$MY_MCP_TOKEN is not set" in named.stderr


def test_a_wrong_or_missing_token_gets_401(repo: Path) -> None:
    port = free_port()
    token = "tok-" + os.urandom(8).hex()
    with http_server(repo, f"0.0.0.0:{port}", env={"DISTPAR_MCP_TOKEN": token}) as errfile:
        url = f"http://127.0.0.1:{port}/mcp"
        assert post(url, None) == 401
        assert post(url, "wrong") == 401
        assert post(url, token) == 200

        async def main() -> set[str]:
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            async with client, streamable_http_client(url, http_client=client) as (read, write), \
                    ClientSession(read, write) as s:
                await s.initialize()
                return {t.name for t in (await s.list_tools()).tools}

        assert "run" in anyio.run(main)
    assert "bearer token required" in errfile.read_text() and token not in errfile.read_text()
