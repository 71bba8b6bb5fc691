"""The merge queue's rerun prompt and the resolve prompt reach every preset through its argv rules (a large one
through the prompt file), the fake agent emulating each CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpar.core.errors import ExitCode
from distpar.core.model import AgentConfig
from distpar.testing.builders import fake_batch, make_repo, sh_git
from tests.agents.conftest import PRESETS
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# demo\n", "registry.txt": "# entries\n"})


def two(filler: int = 0) -> list[dict[str, object]]:
    pad = [f"Background: {'x' * filler}"] if filler else []
    return [fake_batch("a", extra=[*pad, "@fake append registry.txt 'entry a'"]),
            fake_batch("b", extra=[*pad, "@fake sleep 0.3", "@fake append registry.txt 'entry b'"])]


@pytest.mark.parametrize("preset", PRESETS)
def test_rerun_with_every_preset(registry: Path, preset: str) -> None:
    report, _ = run_plan(registry, two(), workers=2, agent=AgentConfig(preset), on_conflict="rerun")
    assert report.exit_code == ExitCode.OK, report.summary()
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b"]
    assert [q["unit"] for q in report.reruns] == ["b"]


@pytest.mark.parametrize("preset", PRESETS)
def test_resolve_with_every_preset_and_a_prompt_too_long_for_argv(registry: Path, preset: str) -> None:
    # each unit's prompt fits one argument; the resolve prompt quotes both, past ARGV_PROMPT_MAX
    report, _ = run_plan(registry, two(filler=60_000), workers=2, agent=AgentConfig(preset),
                         on_conflict="resolve", verify_merged="! grep -q '^<<<<<<<' registry.txt")
    assert report.exit_code == ExitCode.OK, report.summary()
    assert sh_git(registry, "show", "main:registry.txt").splitlines() == ["# entries", "entry a", "entry b"]
    (r,) = report.resolutions
    assert r["ok"] and f"Distpar-Resolver: {preset}" in sh_git(registry, "log", "-1", "--format=%B", r["commit"])
    prompt = Path(r["log"]).with_suffix(".prompt.md").read_text()
    assert len(prompt.encode()) > 100_000 and "<<<<<<<" in prompt and "| @fake append registry.txt" in prompt
