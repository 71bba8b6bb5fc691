"""Backends are transports: each runs ``distpar.worker.unit.run_unit`` somewhere and hands the reply back.

They are registered like agent presets, as ``distpar.backends`` entry points (pyproject.toml): distpar's own
(local, ray, ssh, fake) and any a plugin installs. An entry point names the extra its backend needs
(``"distpar.backends.ssh:SSHBackend [ssh]"``), so a missing dependency says what to install.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from distpar.backends.base import Backend
from distpar.core.errors import UsageError

ENTRY_POINT_GROUP = "distpar.backends"

# distpar's own, as pyproject.toml declares them: used as they are where the package metadata is missing or stale
# (a source checkout on PYTHONPATH), and overridden by the installed entry points of the same name.
BUILTIN = {
    name: EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in (
        ("local", "distpar.backends.local:LocalBackend"),
        ("ray", "distpar.backends.ray:RayBackend [ray]"),
        ("ssh", "distpar.backends.ssh:SSHBackend [ssh]"),
        ("fake", "distpar.backends.fake:FakeBackend"),
    )
}


def registry() -> dict[str, EntryPoint]:
    """Every installed backend by name: distpar's own first, then plugins' (no module is imported)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep
    return found


def backend_names() -> list[str]:
    return list(registry())


def make_backend(name: str, options: dict[str, Any]) -> Backend:
    """The backend registered as ``name``, built with ``options`` (its constructor's keyword arguments)."""
    found = registry()
    ep = found.get(name)
    if ep is None:
        raise UsageError(f"unknown backend {name!r} (installed: {', '.join(found)})",
                         hint="a backend of a plugin is installed with the plugin (a distpar.backends entry point)")
    try:
        cls = ep.load()
    except ModuleNotFoundError as exc:
        extra = ",".join(ep.extras)
        raise UsageError(f"the {name} backend needs {exc.name or 'a module that is not installed'}",
                         hint=f"pip install 'distpar[{extra}]'" if extra else
                         f"install what {ep.value.split(':')[0]} imports") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UsageError(f"the {name} backend ({ep.value}) is not a distpar Backend class")
    return cls(**options)
