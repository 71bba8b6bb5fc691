"""The fake agent's resolver (and the stand-in's): both sides' lines, a diff3 base dropped, text outside kept."""

from __future__ import annotations

from distpar.testing.fake_resolve import union


def test_union_takes_both_sides_in_order() -> None:
    text = "# e\n<<<<<<< HEAD\na\n=======\nb\n>>>>>>> branch\ntail\n"
    assert union(text) == "# e\na\nb\ntail\n"


def test_union_drops_a_diff3_base_and_handles_several_blocks() -> None:
    text = ("<<<<<<< ours\nx\n||||||| base\nold\n=======\ny\n>>>>>>> theirs\nmid\n"
            "<<<<<<< ours\n1\n=======\n2\n>>>>>>> theirs\n")
    assert union(text) == "x\ny\nmid\n1\n2\n"


def test_text_without_markers_is_unchanged() -> None:
    assert union("a\n=======\nb\n") == "a\n=======\nb\n"  # a ruler outside a block is content
