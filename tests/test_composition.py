"""Composition blocks: parsing, nesting validation, serialisation."""

from __future__ import annotations

import pytest

from adapterkit.composition import AdapterCompositionBlock, Stack, parse_composition


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("a", Stack("a")),
        ("a,b", Stack("a", "b")),
        (["a", "b"], Stack("a", "b")),
        (None, None),
        ("", None),
        ([], None),
    ],
)
def test_parse(spec, expected):
    assert parse_composition(spec) == expected


def test_block_queries():
    block = Stack("a", "b", "c")
    assert (block.first(), block.last(), block.flatten(), len(block)) == ("a", "c", frozenset("abc"), 3)
    assert repr(block) == "Stack[a, b, c]"


def test_round_trip_dict():
    block = Stack("lang", "task")
    data = block.to_dict()
    assert data == {
        "type": "Stack",
        "children": [{"type": "single", "children": ["lang"]}, {"type": "single", "children": ["task"]}],
    }
    assert AdapterCompositionBlock.from_dict(data) == block


def test_nested_block_rejected_with_names():
    with pytest.raises(ValueError, match=r"Stack cannot contain Stack\[b\]"):
        parse_composition(Stack("a", Stack("b")))


def test_bad_child_type():
    with pytest.raises(TypeError):
        Stack("a", 3)
