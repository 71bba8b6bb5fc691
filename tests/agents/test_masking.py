"""The one masker (distpar.core.masking): whole texts and output written in pieces."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpar.core.masking import HOLD_MAX, IncrementalMasker, mask, secrets_of


def fed(pieces: list[bytes], secrets: list[str]) -> bytes:
    m = IncrementalMasker(secrets)
    return b"".join(m.feed(p) for p in pieces) + m.flush()


def test_str_and_bytes_are_masked_alike() -> None:
    assert mask("key sk-ant-123456 and tok-987654", ["sk-ant-123456", "tok-987654"]) == "key *** and ***"
    assert mask(b"key sk-ant-123456 and tok-987654", ("tok-987654", "sk-ant-123456")) == b"key *** and ***"


def test_short_values_are_not_secrets() -> None:
    assert mask("a 1 true abc", ["1", "true", "abc", ""]) == "a 1 *** abc"
    assert secrets_of(["abcd", "abcdef", "abcd", "xy"]) == ("abcdef", "abcd")


@pytest.mark.parametrize("order", [["abcd", "abcdefgh"], ["abcdefgh", "abcd"]])
def test_a_secret_inside_another_leaves_nothing_of_the_longer(order: list[str]) -> None:
    # replacing the shorter first would leave "***efgh"
    assert mask("<abcdefgh>", order) == "<***>"


def test_overlapping_secrets_become_one_mask() -> None:
    # neither order of plain replacement hides both: "***ghi" or "abc***"
    assert mask("x abcdefghi y", ["abcdef", "defghi"]) == "x *** y"
    assert mask("x abcdefghi y", ["defghi", "abcdef"]) == "x *** y"


def test_adjacent_occurrences_stay_apart() -> None:
    assert mask("tok-1tok-1", ["tok-1"]) == "******"


def test_a_mapping_or_a_string_is_refused() -> None:
    # a dict would mask its keys, a string its characters
    with pytest.raises(TypeError, match="dict"):
        mask("NAME=value1234", {"NAME": "value1234"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        mask("value1234", "value1234")


def test_a_secret_split_across_writes_is_masked() -> None:
    secret = "sk-test-0123456789"
    pieces = [b"key=" + secret[:3].encode(), secret[3:10].encode(), secret[10:].encode() + b" done\n"]
    assert fed(pieces, [secret]) == b"key=*** done\n"


def test_overlapping_secrets_split_across_writes() -> None:
    # "abcdef" is complete after the first piece, but "defghi" goes on in the next: one mask for both
    assert fed([b"<abcdef", b"ghi>"], ["abcdef", "defghi"]) == b"<***>"
    assert fed([b"<abc", b"def", b"gh", b"i>"], ["defghi", "abcdef"]) == b"<***>"


def test_output_without_a_possible_secret_is_not_held_back() -> None:
    m = IncrementalMasker(["sk-test-0123456789"])
    assert m.feed(b"a line\n") == b"a line\n"  # a live log shows it at once
    assert m.feed(b"partial sk-te") == b"partial "  # the start of a secret waits for what follows
    assert m.feed(b"xt\n") == b"sk-text\n"  # it was not one
    assert m.flush() == b""


def test_a_secret_with_a_newline_is_masked_across_writes() -> None:
    secret = "-----BEGIN KEY-----\nMIIabc\n-----END KEY-----"
    data = f"key:\n{secret}\nafter\n".encode()
    assert fed([data[i : i + 5] for i in range(0, len(data), 5)], [secret]) == b"key:\n***\nafter\n"


def test_no_secrets_passes_everything_through() -> None:
    assert fed([b"abc", b"def"], []) == b"abcdef"


def test_an_endless_run_of_overlapping_secrets_is_not_held_for_ever() -> None:
    m = IncrementalMasker(["aaaa"])
    out = m.feed(b"a" * (HOLD_MAX + 10))
    assert out == b"***" and m.flush() == b""


alphabet = st.sampled_from(list("abcx\n"))
secret_st = st.text(alphabet, min_size=4, max_size=7)


@given(st.lists(secret_st, min_size=1, max_size=3), st.text(alphabet, max_size=60), st.lists(st.integers(0, 60)))
def test_masking_in_pieces_equals_masking_the_whole_text(secrets: list[str], text: str, cuts: list[int]) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in pairwise(bounds)]
    whole = mask(data, secrets)
    assert fed(pieces, secrets) == whole
    assert not any(s.encode() in whole for s in secrets)
