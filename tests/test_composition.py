"""Composition blocks: parsing, nesting validation, serialisation."""

from __future__ import annotations

import pytest

from adapterkit.composition import (
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    MultiTask,
    Parallel,
    Split,
    Stack,
    head_setup_of,
    parse_composition,
)


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
    with pytest.raises(ValueError, match=r"Average cannot contain Fuse\[a, b\]"):
        parse_composition(Average("c", Fuse("a", "b")))


@pytest.mark.parametrize(
    "block",
    [
        Stack("a", Parallel("b", None)),
        Fuse("a", Stack("b", "c"), name="f"),
        Split("a", BatchSplit("b", None, batch_sizes=[1, 2]), splits=[3, 4]),
        Parallel("a", Fuse("b", "c"), Average("d", "e", weights=[1.0, 3.0])),
        MultiTask("a", None, Stack("b", "c")),
    ],
)
def test_every_block_round_trips_through_dict(block):
    assert parse_composition(block) is block
    assert AdapterCompositionBlock.from_dict(block.to_dict()) == block


def test_block_kwargs_are_saved_as_adapterhub_does():
    assert BatchSplit("a", "b", batch_sizes=2).to_dict()["kwargs"] == {"batch_sizes": [2, 2]}
    assert Split("a", "b", splits=[1, 3]).to_dict()["kwargs"] == {"splits": [1, 3]}
    assert "kwargs" not in Fuse("a", "b").to_dict()
    assert Fuse("a", "b", name="f").to_dict()["kwargs"] == {"name": "f"}


def test_parallel_only_at_the_top():
    assert parse_composition(Stack("lang", Parallel("a", "b"))).parallel_channels == 2
    with pytest.raises(ValueError, match="Parallel may only be the whole setup"):
        parse_composition(Fuse("x", Stack("y", Parallel("a", "b"))))
    with pytest.raises(ValueError, match="BatchSplit cannot contain Parallel"):
        parse_composition(BatchSplit(Parallel("a", "b"), "c", batch_sizes=1))


def test_identity_child_only_where_rows_are_split():
    assert Parallel("a", None).flatten() == frozenset("a")
    for block in (Stack, Average, Fuse):
        with pytest.raises(TypeError, match=f"{block.__name__} cannot contain None"):
            block("a", None)


def test_average_weights():
    assert Average("a", "b").weights == [0.5, 0.5]
    assert Average("a", "b", weights=[1.0, 3.0]).weights == [0.25, 0.75]
    assert Average("a", "b", weights=[1.0, 3.0], normalize_weights=False).weights == [1.0, 3.0]
    with pytest.raises(ValueError, match="2 weights for 3 children"):
        Average("a", "b", "c", weights=[1.0, 2.0])


def test_sizes_are_checked_at_construction():
    with pytest.raises(ValueError, match="batch_sizes must be an int or 2 non-negative ints"):
        BatchSplit("a", "b", batch_sizes=[1, 2, 3])


def test_fuse_name_and_heads_implied_by_a_setup():
    assert Fuse("a", Stack("x", "b")).name == "a,b"
    assert Fuse("a", "b", name="f").name == "f"
    assert Fuse("a", "b", name="f") != Fuse("a", "b")
    assert Fuse("a", "b", name="a,b") == Fuse("a", "b")
    assert head_setup_of(Stack("lang", "task")) == "task"
    assert head_setup_of(Parallel("a", Stack("l", "b"), None)) == ["a", "b", None]
    assert head_setup_of(Stack("lang", Parallel("a", "b"))) == ["a", "b"]


def test_bad_child_type():
    with pytest.raises(TypeError):
        Stack("a", 3)
