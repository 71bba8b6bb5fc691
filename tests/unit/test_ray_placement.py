"""Where the Ray backend puts its workers: spread evenly over the live nodes, one actor per node (pure)."""

from __future__ import annotations

from typing import Any

from distpar.backends.ray import SLOT, placement


def node(nid: str, alive: bool = True, **resources: float) -> dict[str, Any]:
    return {"NodeID": nid, "Alive": alive, "Resources": resources}


def test_workers_spread_evenly_over_nodes_with_cpus() -> None:
    nodes = [node("a", CPU=1), node("b", CPU=4), node("c", CPU=1), node("head", CPU=0)]
    placed = placement(nodes, 8, per_slot=False)
    assert sorted(placed) == ["a", "b", "c"]  # a node without CPUs (a head kept free) takes none
    assert sorted(len(ws) for ws in placed.values()) == [2, 3, 3]
    assert sorted(w for ws in placed.values() for w in ws) == list(range(8))


def test_slots_cap_each_node_and_dead_nodes_take_nothing() -> None:
    nodes = [node("a", CPU=1, **{SLOT: 1}), node("b", CPU=1, **{SLOT: 4}), node("gone", alive=False, **{SLOT: 8}),
             node("c", CPU=1, **{SLOT: 2})]
    placed = placement(nodes, 6, per_slot=True)
    assert {n: len(ws) for n, ws in placed.items()} == {"a": 1, "b": 3, "c": 2}


def test_what_does_not_fit_is_left_unplaced() -> None:
    placed = placement([node("a", **{SLOT: 2})], 3, per_slot=True)
    assert placed == {"a": [0, 1]}  # the caller gives worker 2 an actor of its own, spread by Ray
    assert placement([], 2, per_slot=False) == {}
