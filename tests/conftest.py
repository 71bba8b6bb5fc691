"""Every test runs isolated: its own HOME, git config, DISTPAR_HOME; and leaves no agent process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from distpar.testing.builders import make_repo

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent

# The tiers (pyproject.toml's markers). A test with none of them is a unit test: it starts no process (checked
# below, so a test that needs git says so). pytest ignores ``pytestmark`` in a conftest, so a directory whose
# every test needs real git or subprocesses gets its tier here; a module or test may still name its own.
TIERS = ("integration", "ray", "ssh", "containers", "realagents")
DIRECTORY_TIERS = {"integration": "integration", "safety": "integration", "operate": "integration",
                   "ray": "ray", "realagents": "realagents", "containers": "containers"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = REPO_ROOT / "tests"
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            continue
        parts = item.path.relative_to(tests).parts if item.path.is_relative_to(tests) else ()
        tier = DIRECTORY_TIERS.get(parts[0]) if len(parts) > 1 else None
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test without a tier must not start a process (git included): it would be an integration test that
    ``-m "not integration"`` runs by mistake."""
    if any(request.node.get_closest_marker(t) for t in TIERS):
        yield
        return
    started: list[str] = []
    real_init = subprocess.Popen.__init__

    def spy(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        started.append(str(args if isinstance(args, (str, bytes, os.PathLike)) else args[0]))
        real_init(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    yield
    assert not started, (f"a test without a tier marker started {sorted(set(started))}: mark it "
                         "@pytest.mark.integration (or make it pure)")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    mark = uuid.uuid4().hex
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("DISTPAR_HOME", str(home / "distpar-home"))
    monkeypatch.setenv("FAKE_AGENT_STATE", str(home))
    monkeypatch.setenv("DISTPAR_TEST_MARK", mark)
    for var in ("DISTPAR_SUBPROCESS", "CLAUDECODE", "GIT_DIR", "GIT_WORK_TREE", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    yield mark
    leaked = processes_with_mark(mark)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leaked, f"processes left behind by the test: {leaked}"


def processes_with_mark(mark: str, wait: float = 3.0) -> list[int]:
    """Processes (other than this one) whose environment carries the test's mark; waits briefly for exits."""
    deadline = time.time() + wait
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                env = (entry / "environ").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if f"DISTPAR_TEST_MARK={mark}".encode() in env and ") Z " not in stat:
                found.append(int(entry.name))
        if not found or time.time() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# demo\n", "src/__init__.py": ""})


def run_distpar(*args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (exit codes and output exactly as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "distpar", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def run_and_interrupt(plan: Path, repo: Path, started: str, *args: str, timeout: float = 30) -> None:
    """``distpar run PLAN --workers 1 --agent fake ARGS`` in a subprocess, Ctrl+C'd once a file matching
    ``started`` (a glob under DISTPAR_HOME) exists; it must end with 130 (interrupted, resumable)."""
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--workers", "1", "--agent", "fake",
                             *args], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = Path(os.environ["DISTPAR_HOME"])
    if not poll(lambda: list(home.glob(started)), timeout):
        proc.kill()
        proc.wait(timeout=60)
        raise AssertionError(f"nothing matched {started} under DISTPAR_HOME within {timeout:g}s")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130


def run_status(repo: Path, run_id: str) -> dict[str, Any]:
    """``distpar status RUN_ID --json``, parsed."""
    out = run_distpar("status", run_id, "--json", cwd=repo)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def run_id_of(stdout: str) -> str:
    """The run id from the first line of ``distpar run``'s summary (``run <id>: <state> ...``)."""
    return stdout.split()[1].rstrip(":")


def poll(cond: Callable[[], T], timeout: float, step: float = 0.05) -> T:
    """``cond()`` once it is truthy, or its last (falsy) value after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


def wait_for(cond: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """``cond()``'s first truthy value; fails the test after ``timeout`` seconds."""
    value = poll(cond, timeout)
    if not value:
        raise AssertionError(f"timed out waiting for {what}")
    return value


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The real agent CLIs' versions, when the run may include the realagents tier (each costs a --version)."""
    from tests.realagents.clis import report_header

    if "not realagents" in (config.getoption("markexpr") or ""):
        return []
    args = [str(a) for a in config.args]
    if args and not any("realagents" in a or Path(a).resolve() in (REPO_ROOT, REPO_ROOT / "tests") for a in args):
        return []
    return report_header()
