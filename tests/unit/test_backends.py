"""Backends by entry point: the registry, its errors, and the CLI's --backend choices derived from it."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

import click
import pytest

import distpar.backends as backends
from distpar.backends import BUILTIN, ENTRY_POINT_GROUP, backend_names, make_backend, registry
from distpar.backends.fake import FakeBackend
from distpar.core.errors import UsageError


def test_distpar_registers_its_backends_as_entry_points_and_the_fallback_matches() -> None:
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {n: installed.get(n) for n in BUILTIN} == {n: ep.value for n, ep in BUILTIN.items()}
    assert backend_names()[:4] == ["local", "ray", "ssh", "fake"]


def test_a_plugin_backend_is_found_by_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = EntryPoint("mine", "distpar.backends.fake:FakeBackend", ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "entry_points", lambda group: [mine] if group == ENTRY_POINT_GROUP else [])
    assert "mine" in registry() and {"local", "fake"} <= set(registry())
    built = make_backend("mine", {"limit": 2.0})
    assert isinstance(built, FakeBackend) and built.limit == 2.0


def test_an_unknown_backend_lists_the_installed_ones() -> None:
    with pytest.raises(UsageError) as exc:
        make_backend("kubernetes", {})
    assert exc.value.message == "unknown backend 'kubernetes' (installed: local, ray, ssh, fake)"
    assert exc.value.exit_code == 2


def test_a_missing_dependency_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint("cloud", "distpar_no_such_module_here:Cloud [cloud]", ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "entry_points", lambda group: [broken])
    with pytest.raises(UsageError) as exc:
        make_backend("cloud", {})
    assert exc.value.message == "the cloud backend needs distpar_no_such_module_here"
    assert exc.value.hint == "pip install 'distpar[cloud]'"


def test_ssh_without_fabric_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fabric", None)  # as if it were not installed
    with pytest.raises(UsageError) as exc:
        make_backend("ssh", {"hosts": ["h1"]})
    assert "needs fabric" in exc.value.message and exc.value.hint == "pip install 'distpar[ssh]'"


def test_an_entry_point_that_is_not_a_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = EntryPoint("odd", "distpar.backends.fake:commit", ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "entry_points", lambda group: [odd])
    with pytest.raises(UsageError, match=r"the odd backend \(distpar.backends.fake:commit\) is not a distpar Backend"):
        make_backend("odd", {})


def test_the_cli_offers_the_registered_backends() -> None:
    from distpar.cli.main import cli

    run = cli.commands["run"]
    option = next(p for p in run.params if p.name == "backend")
    assert isinstance(option.type, click.Choice) and list(option.type.choices) == backend_names()
