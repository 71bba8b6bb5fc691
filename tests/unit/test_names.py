from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.core import names

ids = st.text(min_size=1, max_size=120).filter(lambda s: names.problem(s) is None)
tricky = st.sampled_from(["a/b", "a b", "A", "a", "..", "x.lock", ".hidden", "-rm", "con", "CON", "nul.txt",
                          "3#1", "#x", "a.", "x" * 80, "x" * 81, "é", "a+b", "a_b", "a%2Fb", "a:b", "HEAD"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(ids, tricky), min_size=2, max_size=30, unique=True))
def test_key_is_injective_even_ignoring_case(values: list[str]) -> None:
    keys = [names.key(v) for v in values]
    assert len({k.lower() for k in keys}) == len(values)


@settings(max_examples=400, deadline=None)
@given(st.one_of(ids, tricky))
def test_key_is_safe_as_a_ref_component_and_a_file_name(value: str) -> None:
    k = names.key(value)
    assert re.fullmatch(r"[a-z0-9_][a-z0-9_.#+-]*", k), k
    assert ".." not in k and not k.endswith((".", ".lock")) and len(k) <= names.MAX_PLAIN
    assert names.branch_problem(f"distpar/coordinator/{k}") is None
    assert not re.fullmatch(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", k)


def test_plain_ids_are_their_own_key_and_others_are_hashed() -> None:
    assert [names.key(x) for x in ("1", "build-api", "3#2", "v1.2")] == ["1", "build-api", "3#2", "v1.2"]
    for odd in ("a/b", "a b", "..", "x.lock", "Auth", "con", "x" * 65):
        assert "+" in names.key(odd) and names.key(odd) != odd
    assert names.key("a/b") != names.key("a b")
    assert names.key("x" * 80 + "1") != names.key("x" * 80 + "2")  # sharing the first 80 characters


@pytest.mark.parametrize(("value", "why"), [("a\nb", "contains a newline"), ("a\x00", "contains a NUL byte"),
                                             ("\x1b[31m", "contains the control character U+001B"), ("", "is empty")])
def test_ids_that_cannot_be_keys(value: str, why: str) -> None:
    assert names.problem(value) == why
    with pytest.raises(ValueError, match=re.escape(why)):
        names.key(value)


@pytest.mark.integration  # real git
@pytest.mark.parametrize("value", ["x" * 80, "a/b", "..", "x.lock", "3#1", "con", "ü"])
def test_real_git_accepts_every_key_as_a_ref(value: str) -> None:
    ref = f"refs/heads/distpar/r1/{names.key(value)}"
    proc = subprocess.run(["git", "check-ref-format", ref], capture_output=True)
    assert proc.returncode == 0, ref


@pytest.mark.integration  # real git
@pytest.mark.parametrize(("name", "ok"), [("main", True), ("feature/x-1", True), ("a..b", False), ("-x", False),
                                         ("a b", False), ("x.lock", False), ("a/.b", False), ("a~1", False)])
def test_branch_names_follow_git(name: str, ok: bool) -> None:
    assert (names.branch_problem(name) is None) == ok
    proc = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True)
    assert (proc.returncode == 0) == ok
