"""Settings in layers, resolved in one place: defaults < ``[tool.distpar]`` in the repository's pyproject.toml
(or a ``distpar.toml`` beside it) < flags. Only settings that belong to a repository live there (how a
workspace is made ready and what gates the work); secrets never do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from distpar.coordinator.options import config_keys
from distpar.core.errors import UsageError

_TYPES: dict[str, type | tuple[type, ...]] = {"bool": bool, "int": int, "float": (int, float), "str": str,
                                              "list": list}
KEYS = {name: _TYPES[kind] for name, kind in config_keys().items()}  # declared once: distpar.coordinator.options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def repo_settings(root: Path) -> dict[str, Any]:
    """The ``[tool.distpar]`` table of ``root/pyproject.toml``, or the top level of ``root/distpar.toml``."""
    found: dict[str, Any] = {}
    source = ""
    for name, table in (("pyproject.toml", ("tool", "distpar")), ("distpar.toml", ())):
        path = root / name
        if not path.is_file():
            continue
        try:
            data: Any = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from None
        for key in table:
            data = data.get(key, {}) if isinstance(data, dict) else {}
        if data:
            found, source = dict(data), str(path)
            break
    for key, value in found.items():
        norm = key.replace("-", "_")
        if norm not in KEYS:
            raise UsageError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(KEYS))})")
        kind = config_keys()[norm]
        if not isinstance(value, KEYS[norm]) or (kind != "bool" and isinstance(value, bool)):
            raise UsageError(f"{source}: {key} must be {'a number' if kind == 'float' else 'a ' + kind}")
        if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{source}: {key} must be a list of strings")
    return {k.replace("-", "_"): v for k, v in found.items()}
