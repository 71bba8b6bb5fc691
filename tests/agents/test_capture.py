"""The masking pipe between an agent and its log files, with real child processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from distpar.capture import LONG_LINE, MaskedPipe
from distpar.process import run_process

pytestmark = pytest.mark.integration

SECRET = "sk-test-0123456789abcdef"


def run(tmp_path: Path, code: str, timeout: float = 20) -> tuple[str, bytes]:
    dest = tmp_path / "out.log"
    with MaskedPipe([dest], [SECRET, "tok-1234"]) as pipe:
        run_process([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "S": SECRET},
                    stdout_path=pipe.path, stderr_path=pipe.path, timeout=timeout)
    return pipe.text, dest.read_bytes()


def test_secret_split_across_writes_is_masked(tmp_path: Path) -> None:
    code = ("import os, sys, time\ns = os.environ['S']\n"
            "for part in (s[:5], s[5:11], s[11:] + ' tail\\n', 'tok-12', '34 end'):\n"
            "    sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.08)\n")
    text, raw = run(tmp_path, code)
    assert text == "*** tail\n*** end"
    assert raw == text.encode() and SECRET.encode() not in raw


def test_long_line_without_newline_is_written_and_still_masked(tmp_path: Path) -> None:
    code = (f"import os, sys\ns = os.environ['S']\nsys.stdout.write('x' * {LONG_LINE - 10} + s + 'y' * {LONG_LINE})\n"
            "sys.stdout.flush()\n")
    text, raw = run(tmp_path, code)
    assert SECRET not in text and SECRET.encode() not in raw
    assert text == "x" * (LONG_LINE - 10) + "***" + "y" * LONG_LINE


def test_an_escaped_grandchild_holding_the_pipe_does_not_block(tmp_path: Path) -> None:
    # A daemon that left the agent's session keeps the write end open: the reader stops anyway once the agent
    # is gone (no end of file needed).
    pid_file = tmp_path / "daemon.pid"
    code = ("import os, subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True)\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "print('agent done', flush=True)\n")
    t0 = time.time()
    try:
        text, _ = run(tmp_path, code)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 9)
    assert text == "agent done\n" and time.time() - t0 < 10
