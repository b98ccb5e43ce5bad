"""The composition interpreter on a toy site: each block's rule, independent of any method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch

from adapterkit.composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from adapterkit.context import ForwardContext, RowGroups
from adapterkit.methods.compose import Composer, SiteState, compose, route, run_setup


@dataclass
class Toy(SiteState):
    v: torch.Tensor  # (batch, tokens)

    @property
    def batch_size(self) -> int:
        return self.v.shape[0]

    @property
    def seq_len(self) -> int:
        return self.v.shape[1]

    def rows(self, index):
        return Toy(self.v[index])

    def tokens(self, index):
        return Toy(self.v[:, index])

    @classmethod
    def cat(cls, states: Sequence[Toy], dim: int) -> Toy:
        return Toy(torch.cat([s.v for s in states], dim))

    @classmethod
    def weighted_sum(cls, states, weights, start):
        return Toy(sum(w * s.v for w, s in zip(weights, states, strict=True)))


class ToyComposer(Composer[Toy]):
    """Adapter ``name`` maps v to ``v * k + 1`` with k = FACTORS[name]; absent names are skipped."""

    FACTORS = {"a": 2.0, "b": 3.0, "c": 5.0}

    def __init__(self, present=("a", "b", "c")):
        self.present = frozenset(present)

    def single(self, name, state):
        return Toy(state.v * self.FACTORS[name] + 1)


def f(name, v):
    return v * ToyComposer.FACTORS[name] + 1


V = torch.arange(12.0).view(4, 3)


def run(block, v=V, present=("a", "b", "c")):
    return compose(block, Toy(v), ToyComposer(present)).v


def test_stack_applies_in_order_and_skips_absent_adapters():
    torch.testing.assert_close(run(Stack("a", "b")), f("b", f("a", V)))
    torch.testing.assert_close(run(Stack("a", "b"), present=("b",)), f("b", V))
    assert run(Stack("a"), present=()) is V


def test_batch_split_and_identity_rows():
    out = run(BatchSplit("a", None, "b", batch_sizes=[1, 2, 1]))
    torch.testing.assert_close(out, torch.cat([f("a", V[:1]), V[1:3], f("b", V[3:])]))
    with pytest.raises(ValueError, match=r"batch_sizes \[1, 1\] \(sum 2\) but the batch has 4 rows"):
        run(BatchSplit("a", "b", batch_sizes=1))


def test_parallel_cuts_the_replicated_batch_into_channels():
    out = run(Parallel("a", Stack("b", "c")))
    torch.testing.assert_close(out, torch.cat([f("a", V[:2]), f("c", f("b", V[2:]))]))
    with pytest.raises(ValueError, match="cannot hold 3 channels"):
        run(Parallel("a", "b", "c"))


def test_split_cuts_tokens():
    out = run(Split("a", "b", splits=[1, 2]))
    torch.testing.assert_close(out, torch.cat([f("a", V[:, :1]), f("b", V[:, 1:])], dim=1))
    with pytest.raises(ValueError, match="sequence has 3 tokens"):
        run(Split("a", "b", splits=2))


def test_average_applies_weights_once():
    out = run(Average("a", "b", weights=[1.0, 3.0]))
    torch.testing.assert_close(out, 0.25 * f("a", V) + 0.75 * f("b", V))
    torch.testing.assert_close(run(Average("a", "a")), f("a", V))


def test_fuse_needs_a_method_that_defines_it():
    with pytest.raises(ValueError, match="Fuse is only defined for bottleneck adapters"):
        run(Fuse("a", "b"))


@pytest.mark.parametrize("per_row", [["a", "a", None, "b"], ["b", None, "a", "b"]])
def test_routing_restores_row_order(per_row):
    groups = RowGroups.from_rows(per_row)
    assert (groups.contiguous is not None) == (per_row == ["a", "a", None, "b"])
    out = route(groups, Toy(V), ToyComposer()).v
    expected = torch.stack([V[i] if t is None else f(t, V[i]) for i, t in enumerate(per_row)])
    torch.testing.assert_close(out, expected)


def test_multitask_routes_by_task_ids_given_as_indices_or_names():
    block = MultiTask("a", None, "b")
    for ids in (torch.tensor([2, 0, 1, 0]), ["b", "a", None, "a"]):
        ctx = ForwardContext(block, task_ids=ids)
        ctx.enter(owner=block)
        try:
            out = run_setup(ctx, Toy(V), ToyComposer()).v
        finally:
            ctx.exit(owner=block)
        torch.testing.assert_close(out, torch.stack([f("b", V[0]), f("a", V[1]), V[2], f("a", V[3])]))


def test_multitask_errors_name_the_problem():
    block = MultiTask("a", "b")
    for ids, message in ((None, "needs the forward argument task_ids"), ([0, 5, 0, 0], "task id 5 is not a child")):
        ctx = ForwardContext(block, task_ids=ids)
        ctx.enter(owner=block)
        try:
            with pytest.raises(ValueError, match=message):
                run_setup(ctx, Toy(V), ToyComposer())
        finally:
            ctx.exit(owner=block)
