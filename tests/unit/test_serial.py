"""The one serializer of what crosses a process boundary: derived from the dataclasses' fields and hints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from distpar.core import serial
from distpar.core.model import AgentConfig


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    name: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    n: int
    ratio: float
    color: Color
    where: Path
    inner: Inner
    maybe: Inner | None = None
    many: tuple[Inner, ...] = ()
    table: dict[str, int] = field(default_factory=dict)
    agent: AgentConfig = field(default_factory=AgentConfig)


def test_round_trip_through_json() -> None:
    obj = Outer(3, 0.5, Color.BLUE, Path("/tmp/x"), Inner("a", ("t1", "t2")), None, (Inner("b"), Inner("c", ("u",))),
                {"k": 1}, AgentConfig(preset="fake", extra_args=("--x",), max_turns=3))
    data = json.loads(json.dumps(serial.dump(obj)))
    assert data["color"] == "blue" and data["where"] == "/tmp/x"
    assert data["inner"] == {"name": "a", "tags": ["t1", "t2"]}
    assert serial.load(Outer, data) == obj


def test_missing_fields_take_defaults_and_unknown_ones_are_ignored() -> None:
    back = serial.load(Outer, {"n": 1, "ratio": 2, "color": "red", "where": "p", "inner": {"name": "i"},
                               "added_by_a_newer_writer": True})
    assert back == Outer(1, 2.0, Color.RED, Path("p"), Inner("i"))
    assert isinstance(back.ratio, float)
