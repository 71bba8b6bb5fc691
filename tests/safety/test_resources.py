"""Item 8: a full disk under the journal says what ran out and where; a batch that commits a big file is
warned about."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_distpar
from tests.safety.conftest import sh


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB file system (tmpfs; needs root) to hold DISTPAR_HOME."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_journal_on_a_full_disk_at_start(repo: Path, small_disk: Path, tmp_path: Path) -> None:
    home = small_disk / "distpar"
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=64k"], capture_output=True)
    plan = write_plan(tmp_path / "p.md", [fake_batch(1)])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo,
                      env={"DISTPAR_HOME": str(home), "DISTPAR_WORKTREES": str(tmp_path / "wt")})
    assert res.returncode == 4, res.stdout + res.stderr
    assert res.stderr.splitlines()[0] == (f"Error: the journal {home / 'journal.db'} cannot be written: the disk is "
                                          "full (0.0 MB free there)")
    assert "unexpected" not in res.stderr and "Traceback" not in res.stderr


def test_journal_on_a_disk_that_fills_up_during_the_run(repo: Path, small_disk: Path, tmp_path: Path) -> None:
    home = small_disk / "distpar"
    plan = write_plan(tmp_path / "p.md", [
        fake_batch(1, extra=[sh(f"dd if=/dev/zero of={small_disk / 'filler'} bs=64k 2>/dev/null; true")]),
    ])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo,
                      env={"DISTPAR_HOME": str(home), "DISTPAR_WORKTREES": str(tmp_path / "wt")})
    assert res.returncode == 4, res.stdout + res.stderr
    assert f"Error: the journal {home / 'journal.db'} cannot be written: the disk is full (0.0 MB free there)" \
        in res.stderr.splitlines(), res.stderr
    assert "Hint: free space on the file system of" in res.stderr
    assert "unexpected" not in res.stderr and "Traceback" not in res.stderr + res.stdout


def test_a_big_file_is_warned_about(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "p.md", [
        fake_batch(1, extra=[sh("head -c 3145728 /dev/zero > big.bin && echo small > small.txt")]),
    ])
    res = run_distpar("run", str(plan), "--agent", "fake", "--warn-size", "2", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("warning: batch 1:")] == [
        "warning: batch 1: added big.bin (3.0 MB), over the warning size of 2.0 MB; it is committed: check that "
        "it belongs in the repository"]
    quiet = run_distpar("run", str(plan), "--agent", "fake", "--warn-size", "0", cwd=repo)
    assert quiet.returncode == 0 and "warning: batch" not in quiet.stderr
