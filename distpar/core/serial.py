"""One serializer for the dataclasses that cross a process or machine boundary (unit specs, worker settings,
results, run options in the journal): ``dump(obj)`` gives plain JSON data, ``load(cls, data)`` the dataclass back,
both derived from ``dataclasses.fields`` and the type hints, so a new field needs no code here.

Handled: str/int/float/bool/None, Enums, Paths, tuples and lists, dicts with str keys, nested dataclasses and
``X | None`` of any of these. A field missing from ``data`` takes its default (older writers); a field ``data`` has
that ``cls`` does not know is ignored (newer writers). ``VERSION`` is the format of the whole message and is
checked by the callers that frame one (``worker``, ``journal``)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def dump(obj: Any) -> Any:
    """``obj`` as JSON data: dataclasses become dicts of their fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [dump(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): dump(v) for k, v in obj.items()}
    return obj


def load(cls: type[T], data: dict[str, Any]) -> T:
    """The dataclass ``cls`` from ``dump``'s output."""
    hints = _hints(cls)  # type: ignore[arg-type]
    kwargs = {f.name: _value(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init and f.name in data}
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _value(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], v) if len(inner) == 1 else v
    if origin is tuple:
        item = args[0] if args else Any
        return tuple(_value(item, x) for x in v)
    if origin is list:
        return [_value(args[0] if args else Any, x) for x in v]
    if origin is dict:
        return {k: _value(args[1] if len(args) == 2 else Any, x) for k, x in v.items()}
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return load(tp, v)
        if issubclass(tp, enum.Enum):
            return tp(v)
        if tp is Path:
            return Path(v)
        if tp is float and isinstance(v, int):
            return float(v)
    return v
