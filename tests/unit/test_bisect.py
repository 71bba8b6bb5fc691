"""The bisection of the merge sequence, pure: for every length up to 33 and every first failing merge, it names that
merge in at most ceil(log2 n) runs of the check (one more when it is the first merge: the start is checked too)."""

from __future__ import annotations

import math

from distpar.coordinator.bisect import Check, Merge, bisect, each_merge
from distpar.infra.workspace import HookResult


def seq(n: int) -> list[Merge]:
    return [Merge(f"c{i}", f"b/u{i}", f"u{i}", (f"u{i}",)) for i in range(n)]


def checker(first_bad: int, start_fails: bool = False) -> tuple[list[str], Check]:
    ran: list[str] = []

    def check(commit: str, step: int) -> HookResult:
        ran.append(commit)
        bad = start_fails if commit == "start" else int(commit[1:]) >= first_bad
        return HookResult("verify-merged", not bad, 1 if bad else 0, 0.0, f"tail at {commit}")
    return ran, check


def test_bisect_names_the_first_failing_merge_in_log_n_runs() -> None:
    for n in range(1, 34):
        for first_bad in range(n):
            ran, check = checker(first_bad)
            found = bisect(seq(n), check, HookResult("verify-merged", False, 1, 0.0, "head"), "start")
            assert found.unit == f"u{first_bad}" and found.commit == f"c{first_bad}", (n, first_bad)
            assert found.runs == len(ran) <= math.ceil(math.log2(n)) + 1, (n, first_bad, ran)
            assert found.tail == ("head" if first_bad == n - 1 else f"tail at c{first_bad}")


def test_a_check_failing_at_the_start_already_names_no_unit() -> None:
    _, check = checker(0, start_fails=True)
    found = bisect(seq(4), check, HookResult("verify-merged", False, 1, 0.0, "head"), "start")
    assert found.unit is None and found.label == "start" and "before any unit" in found.describe()


def test_each_merge_stops_at_the_first_failure() -> None:
    ran, check = checker(2)
    last, found = each_merge(seq(5), check)
    assert ran == ["c0", "c1", "c2"] and last is not None and not last.ok
    assert found is not None and found.unit == "u2" and found.each
    ran, check = checker(99)
    last, found = each_merge(seq(3), check)
    assert found is None and last is not None and last.ok and ran == ["c0", "c1", "c2"]
