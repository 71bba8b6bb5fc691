"""The merge queue in the pure run state (``--on-conflict rerun``): plain transitions, then a hypothesis property
over random units, files and interleavings, with conflicts computed as git would find them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.core.model import UnitStatus
from distpar.core.state import (
    Finish,
    Instruction,
    Interrupt,
    Rerun,
    RunState,
    Start,
    UnitEnded,
    UnitInfo,
    UnitLost,
    WorkerUp,
)

OK = UnitStatus.OK


def make(n: int, workers: int, **kw: object) -> tuple[RunState, list[Instruction]]:
    st_ = RunState.create([UnitInfo(f"u{i}", order=i) for i in range(n)], **kw)
    out: list[Instruction] = []
    for w in range(workers):
        out += st_.handle(WorkerUp(w))
    st_.validate()
    return st_, out


def conflict(uid: str, worker: int, files: tuple[str, ...] = ("f",), with_: tuple[str, ...] = ("u0",)) -> UnitEnded:
    return UnitEnded(uid, worker, OK, conflicts=True, conflict_files=files, conflict_with=with_, touched=files)


def test_a_conflict_in_rerun_mode_queues_the_unit_with_the_integration_so_far() -> None:
    state, _ = make(2, 2, on_conflict="rerun")
    state.handle(UnitEnded("u0", 0, OK))
    out = state.handle(conflict("u1", 1))
    state.validate()
    (rerun,) = [i for i in out if isinstance(i, Rerun)]
    assert rerun == Rerun("u1", ("u0",), "conflicts in f with u0", ("f",), ("u0",), 1, ("f",))
    assert [i for i in out if isinstance(i, Start)] == [Start("u1", 0, 1, rerun=1)] or \
        [i for i in out if isinstance(i, Start)] == [Start("u1", 1, 1, rerun=1)]
    assert "u1" not in state.done and not state.conflicted


def test_reruns_on_the_same_file_run_one_after_another_and_others_alongside() -> None:
    state, _ = make(4, 4, on_conflict="rerun")
    state.handle(UnitEnded("u0", 0, OK))
    state.handle(conflict("u1", 1))  # starts at once on a free worker
    assert "u1" in state.running
    out = state.handle(conflict("u2", 2))
    assert not [i for i in out if isinstance(i, Start)] and state.rerun_queue == ["u2"]  # waits for u1 (file f)
    out = state.handle(conflict("u3", 3, files=("g",)))
    assert [i.uid for i in out if isinstance(i, Start)] == ["u3"]  # another file: alongside
    state.validate()
    (w,) = [w for u, (w, _) in state.running.items() if u == "u1"]
    out = state.handle(UnitEnded("u1", w, OK))
    assert [i.uid for i in out if isinstance(i, Start)] == ["u2"]
    state.validate()


def test_max_reruns_bounds_each_unit_then_the_conflict_stands() -> None:
    state, _ = make(2, 1, on_conflict="rerun", max_reruns=1)
    state.handle(UnitEnded("u0", 0, OK))
    state.handle(conflict("u1", 0))
    out = state.handle(conflict("u1", 0))
    assert not [i for i in out if isinstance(i, Rerun)] and state.done["u1"] is OK and state.conflicted
    assert out[-1] == Finish(True)
    state.validate()


def test_stop_mode_never_reruns() -> None:
    state, _ = make(2, 2)
    state.handle(UnitEnded("u0", 0, OK))
    out = state.handle(conflict("u1", 1))
    assert not [i for i in out if isinstance(i, Rerun)] and state.conflicted


def test_a_lost_rerun_keeps_its_place_and_a_queued_unit_survives_an_interrupt() -> None:
    state, _ = make(3, 2, on_conflict="rerun")
    state.handle(UnitEnded("u0", 0, OK))
    state.handle(conflict("u1", 1))
    (w,) = [w for u, (w, _) in state.running.items() if u == "u1"]
    out = state.handle(UnitLost("u1", w, "broke"))
    assert [(i.uid, i.rerun) for i in out if isinstance(i, Start)] == [("u1", 1)]
    state.validate()
    state.handle(conflict("u2", next(w2 for u, (w2, _) in state.running.items() if u == "u2")))
    assert state.rerun_queue == ["u2"]
    state.handle(Interrupt())
    state.validate()
    assert "u2" in state.pending


def test_a_resumed_queue_runs_first_as_reruns() -> None:
    _state, out = make(3, 2, on_conflict="rerun", done={"u0": OK}, queued={"u2": (1, ("f",))})
    assert [(i.uid, i.rerun) for i in out if isinstance(i, Start)] == [("u2", 1), ("u1", 0)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_units_colliding_on_files_cost_at_most_one_rerun_each(data: st.DataObject) -> None:
    """Conflicts as git finds them: a unit's finished work conflicts when a unit integrated since its base was taken
    touched one of its files. Units each on one file (several files, several queues): every unit lands and none
    reruns twice, whatever the timing. Units on several files: a rerun may meet a unit integrated while it ran (a
    first run on another of its files); the run still ends, within --max-reruns, the conflict then standing."""
    n = data.draw(st.integers(1, 8))
    workers = data.draw(st.integers(1, 4))
    single = data.draw(st.booleans())
    max_reruns = 1 if single else data.draw(st.integers(0, 2))
    files = {f"u{i}": frozenset(data.draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=1 if single else 2)))
             for i in range(n)}
    state, out = make(n, workers, on_conflict="rerun", max_reruns=max_reruns)
    integrated: list[str] = []
    base: dict[str, int] = {}  # uid -> how much of ``integrated`` its running attempt started from
    running: dict[str, int] = {}

    def take(instructions: list[Instruction]) -> None:
        for i in instructions:
            if isinstance(i, Start):
                base[i.uid] = len(integrated) if i.rerun else 0
                running[i.uid] = i.worker
            if isinstance(i, Rerun):
                assert i.count <= max_reruns and (i.count == 1 or not single), f"{i.uid} rerun twice"

    take(out)
    for _ in range(4 * n + 4):
        if state.finished:
            break
        uid = data.draw(st.sampled_from(sorted(running)))
        worker = running.pop(uid)
        later = integrated[base[uid]:]
        hit = tuple(sorted(set().union(*(files[u] & files[uid] for u in later)))) if later else ()
        if not hit:
            integrated.append(uid)
        take(state.handle(UnitEnded(uid, worker, OK, conflicts=bool(hit), conflict_files=hit,
                                    conflict_with=tuple(u for u in later if files[u] & files[uid]),
                                    touched=tuple(sorted(files[uid])))))
        state.validate()
    assert state.finished and not running and all(s is OK for s in state.done.values())
    assert all(n <= max_reruns for n in state.reruns.values())
    if single:
        assert not state.conflicted and sorted(integrated) == sorted(files), (files, integrated)
    else:
        assert state.conflicted or sorted(integrated) == sorted(files)
