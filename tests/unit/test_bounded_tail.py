"""model.bounded_tail and the capture's kept text: bounded in lines, bytes and line length."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distpar.core.model import TAIL_BYTES, bounded_tail
from distpar.infra.capture import KEEP_LINE, MaskedPipe


def test_short_text_is_unchanged() -> None:
    assert bounded_tail("a\nb\n") == "a\nb\n"


def test_lines_bytes_and_line_length_are_cut() -> None:
    text = "\n".join(f"line {i}" for i in range(1000))
    assert bounded_tail(text).splitlines() == [f"line {i}" for i in range(960, 1000)]
    one = bounded_tail("x" * 50_000_000)
    assert one.startswith("x" * 2000) and one.endswith("the log has the whole line]") and len(one) < 2100
    wide = bounded_tail("\n".join("é" * 1999 for _ in range(40)))
    assert len(wide.encode()) <= TAIL_BYTES


@pytest.mark.integration
def test_captured_text_keeps_a_bounded_start_of_a_huge_line(tmp_path: Path) -> None:
    with MaskedPipe([tmp_path / "log"], ["secret-value"]) as pipe, open(pipe.path, "wb") as out:
        subprocess.run(["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' a; echo; echo end"], stdout=out,
                       check=True)
    assert (tmp_path / "log").stat().st_size == 5_000_000 + 5  # the log has everything
    assert len(pipe.text) < KEEP_LINE + 100
    assert pipe.text.endswith("the log has the whole line]\nend\n")
