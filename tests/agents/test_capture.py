"""The masking pipe between an agent and its log files, with real child processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distpar.infra.capture import CHUNK, LINE_CHARS, MaskedPipe, OutputLines
from distpar.infra.process import run_process

pytestmark = pytest.mark.integration

SECRET = "sk-test-0123456789abcdef"


def run(tmp_path: Path, code: str, timeout: float = 20, on_line: Any = None) -> tuple[str, bytes]:
    dest = tmp_path / "out.log"
    with MaskedPipe([dest], [SECRET, "tok-1234"], on_line) as pipe:
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
    # the secret straddles the end of the first read from the pipe
    code = (f"import os, sys\ns = os.environ['S']\nsys.stdout.write('x' * {CHUNK - 10} + s + 'y' * {CHUNK})\n"
            "sys.stdout.flush()\n")
    text, raw = run(tmp_path, code)
    assert SECRET not in text and SECRET.encode() not in raw
    assert text == "x" * (CHUNK - 10) + "***" + "y" * CHUNK


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


def test_lines_handed_on_are_masked_complete_and_bounded(tmp_path: Path) -> None:
    code = ("import os, sys, time\ns = os.environ['S']\n"
            "for part in ('a ' + s[:5], s[5:] + ' b\\nsecond', ' line\\n', 'z' * 100000 + '\\n', 'no newline'):\n"
            "    sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.05)\n")
    lines: list[tuple[bytes, bool]] = []
    text, _ = run(tmp_path, code, on_line=lambda line, cut: lines.append((line, cut)))
    assert lines[:2] == [(b"a *** b", False), (b"second line", False)]
    assert lines[2][1] and lines[2][0] == b"z" * 4 * LINE_CHARS  # bounded: only the start is kept
    assert lines[3] == (b"no newline", False)
    assert len(lines) == 4 and SECRET not in text


def test_output_lines_are_rate_limited_with_a_count_of_what_was_skipped() -> None:
    now = [0.0]
    sent: list[dict[str, Any]] = []
    out = OutputLines(sent.append, {"batch": "b"}, rate=3, clock=lambda: now[0])
    for i in range(10):
        out.line("out" if i % 2 else "err", str(i).encode())
    out.line("out", "é".encode() * (LINE_CHARS + 1))
    assert [e["line"] for e in sent] == ["0", "1", "2"] and all(e["batch"] == "b" for e in sent)
    now[0] = 1.0  # the next second: first what was skipped (per pipe), then the line
    out.line("out", b"next")
    skipped = [(e["fd"], e["skipped"]) for e in sent if "skipped" in e]
    assert skipped == [("out", 5), ("err", 3)]  # 3, 5, 7, 9 and the long line; 4, 6, 8
    assert sent[-1]["line"] == "next" and sent[-1]["fd"] == "out"
    now[0] = 2.0
    out.line("err", "é".encode() * (LINE_CHARS + 1))
    out.close()
    cut = sent[-1]
    assert cut["cut"] and cut["line"].startswith("é" * LINE_CHARS + " [... cut at ")
