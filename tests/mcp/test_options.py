"""The tools' option arguments come from click's own declarations: a new option appears by itself."""

from __future__ import annotations

from pathlib import Path

import click
import pydantic
import pytest

from distpar.mcp import options as opts


@click.command()
@click.argument("plan_file")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=None, help="How many.")
@click.option("--strategy", type=click.Choice(["a", "b"]), default="a", help="Which.")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None, help="Money.")
@click.option("--hooks/--no-hooks", default=False, help="Hooks.")
@click.option("--keep", is_flag=True, help="Keep.")
@click.option("--env", "env_names", multiple=True, help="Names.")
@click.option("--inventory", type=click.Path(), default=None, help="A file.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--secret-plumbing", hidden=True)
def command(**kw: object) -> None:
    pass


def test_every_visible_option_but_the_denied_ones() -> None:
    derived = {o.name: o for o in opts.derive(command, frozenset({"as_json"}))}
    assert list(derived) == ["workers", "strategy", "budget", "hooks", "keep", "env", "inventory"]
    assert derived["strategy"].default == "a" and derived["workers"].default is None


def test_types_ranges_and_help_reach_the_schema() -> None:
    fields = {o.name: (o.annotation, o.default) for o in opts.derive(command, frozenset({"as_json"}))}
    model = pydantic.create_model("Args", **fields)  # type: ignore[call-overload]
    props = model.model_json_schema()["properties"]
    assert props["workers"]["anyOf"][0] == {"minimum": 1, "type": "integer"}
    assert props["workers"]["description"] == "How many."
    assert props["strategy"]["enum"] == ["a", "b"]
    assert props["budget"]["anyOf"][0] == {"exclusiveMinimum": 0, "type": "number"}
    assert props["env"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
    assert props["hooks"]["type"] == "boolean" and props["hooks"]["default"] is False
    for bad in ({"workers": 0}, {"strategy": "c"}, {"budget": 0}):
        with pytest.raises(pydantic.ValidationError):
            model(**bad)


def test_argv_round_trips_through_click(tmp_path: Path) -> None:
    options = opts.derive(command, frozenset({"as_json"}))
    values = {"workers": 3, "strategy": "b", "budget": 0.5, "hooks": False, "keep": True, "env": ["A", "B"],
              "inventory": "hosts.toml"}
    words = opts.argv(options, values, tmp_path)
    ctx = command.make_context("command", ["plan.md", *words])
    assert ctx.params == {"plan_file": "plan.md", "workers": 3, "strategy": "b", "budget": 0.5, "hooks": False,
                          "keep": True, "env_names": ("A", "B"), "inventory": str(tmp_path / "hosts.toml"),
                          "as_json": False, "secret_plumbing": None}
    assert opts.argv(options, {"hooks": True}, tmp_path) == ["--hooks"]
    assert opts.argv(options, {"strategy": "a", "keep": False}, tmp_path) == []  # defaults say nothing
