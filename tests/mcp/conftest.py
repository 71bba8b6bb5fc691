"""Drive ``distpar mcp`` as an agent host does: the official SDK's ClientSession over stdio (or streamable HTTP)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the MCP tests need the mcp extra: pip install 'distpar[mcp]'")

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult


@contextlib.asynccontextmanager
async def mcp_session(cwd: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """``distpar mcp ARGS`` started by the SDK's stdio client in ``cwd``, initialized."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "distpar", "mcp", *args], cwd=str(cwd),
                                   env={**os.environ, **(env or {})})
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


def data(result: CallToolResult) -> dict[str, Any]:
    """A successful call's structured content."""
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def dump(result: CallToolResult) -> str:
    """Everything a call returned, as the client got it."""
    return text(result) + json.dumps(result.structured_content or {})
