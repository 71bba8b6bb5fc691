"""--on-conflict and --max-reruns: declared once, a choice everywhere (the CLI, the API, [tool.distpar], MCP)."""

from __future__ import annotations

import click
import pydantic
import pytest
from click.testing import CliRunner

from distpar.cli.options import run_option_flags
from distpar.coordinator import options as run_options
from distpar.core.errors import UsageError
from distpar.mcp import options as mcp_options


@click.command()
@run_option_flags(only=("on_conflict", "max_reruns"))
def command(**kw: object) -> None:
    click.echo(repr(sorted(kw.items())))


def test_the_flag_is_a_choice_and_a_bad_value_is_a_clear_error() -> None:
    ok = CliRunner().invoke(command, ["--on-conflict", "rerun", "--max-reruns", "2"])
    assert ok.exit_code == 0 and "('on_conflict', 'rerun')" in ok.output and "('max_reruns', 2)" in ok.output
    bad = CliRunner().invoke(command, ["--on-conflict", "merge"])
    assert bad.exit_code == 2
    assert "Invalid value for '--on-conflict': 'merge' is not one of 'stop', 'rerun', 'resolve'." in bad.output
    assert CliRunner().invoke(command, ["--max-reruns", "-1"]).exit_code == 2


def test_the_api_and_the_config_refuse_a_value_outside_the_choices() -> None:
    assert run_options.RunOptions().on_conflict == "stop" and run_options.RunOptions().max_reruns == 1
    with pytest.raises(UsageError, match=r"^--on-conflict: 'merge' is not one of stop, rerun, resolve$"):
        run_options.check(run_options.RunOptions(on_conflict="merge"))
    assert run_options.config_keys()["on_conflict"] == "str" and run_options.config_keys()["max_reruns"] == "int"


def test_the_mcp_schema_has_the_enum() -> None:
    fields = {o.name: (o.annotation, o.default) for o in mcp_options.derive(command)}
    props = pydantic.create_model("Args", **fields).model_json_schema()["properties"]  # type: ignore[call-overload]
    assert props["on_conflict"]["anyOf"][0]["enum"] == ["stop", "rerun", "resolve"]
