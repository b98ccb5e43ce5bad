"""Running a composition block at one adapter site, for any method.

A method describes the value flowing through one of its sites (bottleneck: the sub-block output and
its residual; LoRA: the projection input and output) by a `SiteState` subclass that can be cut into
batch rows or tokens, concatenated and weighted. `compose` then runs every block the same way for
every method:

    Stack(a, b)          b(a(s))
    BatchSplit / Parallel / MultiTask / row routing
                         child_i(s[rows_i]), results put back in row order
    Split(a, b)          child_i(s[:, tokens_i]), concatenated along the tokens
    Average(a, b)        sum_i w_i child_i(s)  (LoRA: s + sum_i w_i (child_i(s) - s))
    Fuse(a, b)           the method's `fuse` (bottleneck adapters only)

`Parallel` needs no work here beyond the row split: the model's layers already carry the batch
replicated once per channel (see `integration.target`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Sequence
from typing import Generic, TypeVar

import torch

from ..composition import AdapterCompositionBlock, Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from ..context import ForwardContext, RowGroups

S = TypeVar("S", bound="SiteState")
Rows = slice | torch.Tensor


class SiteState(ABC):
    """The value an adapter site transforms, with the cuts composition blocks need.

    Every tensor field is batch-first; token cuts apply to dim 1 of sequence tensors.
    """

    @property
    @abstractmethod
    def batch_size(self) -> int:
        """Rows in this state."""

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Tokens per row."""

    @abstractmethod
    def rows(self: S, index: Rows) -> S:
        """The state restricted to batch rows ``index`` (a slice or a 1-D index tensor)."""

    @abstractmethod
    def tokens(self: S, index: slice) -> S:
        """The state restricted to tokens ``index``."""

    @classmethod
    @abstractmethod
    def cat(cls: type[S], states: Sequence[S], dim: int) -> S:
        """States concatenated along the batch (``dim=0``) or the tokens (``dim=1``)."""

    @classmethod
    @abstractmethod
    def weighted_sum(cls: type[S], states: Sequence[S], weights: Sequence[float], start: S) -> S:
        """The `Average` of ``states``, the children's results from the common input ``start``
        (a method chooses what it weights: whole outputs, or updates relative to ``start``)."""


class Composer(ABC, Generic[S]):
    """One method's behaviour at one site: how a single adapter transforms the state.

    Attributes:
        present: names of the adapters that have modules at this site.
    """

    present: frozenset[str] | dict

    @abstractmethod
    def single(self, name: str, state: S) -> S:
        """Run adapter ``name`` on ``state``."""

    def route(self, groups: RowGroups, state: S) -> S | None:
        """A method's own per-row routing, when it can do better than cutting and re-joining the
        state (e.g. adding LoRA updates into the rows in place); None: use the generic one."""
        return None

    def fuse(self, block: Fuse, state: S, run: Callable[[object, S], S]) -> S:
        """Run an AdapterFusion block (``run(child, state)`` runs a child).

        Raises:
            ValueError: methods other than bottleneck adapters have no fusion.
        """
        raise ValueError(f"Fuse is only defined for bottleneck adapters, not at this site ({block!r})")


def touches(block: object, present: frozenset[str] | dict) -> bool:
    """Whether ``block`` (a name, None or a block) has any adapter present at a site."""
    if block is None:
        return False
    if isinstance(block, str):
        return block in present
    return any(name in present for name in block.flatten())  # type: ignore[attr-defined]


def compose(block: object, state: S, composer: Composer[S]) -> S:
    """Run ``block`` (an adapter name, None, or a composition block) on ``state``.

    Raises:
        ValueError: if a block's sizes do not match the state (naming block and sizes).
    """
    if block is None or not touches(block, composer.present):
        return state
    if isinstance(block, str):
        return composer.single(block, state)
    runner = _RUNNERS.get(type(block))
    if runner is None:
        raise ValueError(f"no runner for composition block {type(block).__name__}")
    return runner(block, state, composer)


def _stack(block: Stack, state: S, composer: Composer[S]) -> S:
    for child in block:
        state = compose(child, state, composer)
    return state


def _by_rows(children: Sequence[object], bounds: Sequence[int], state: S, composer: Composer[S]) -> S:
    """Children on consecutive row ranges ``bounds[i]:bounds[i+1]``, concatenated back."""
    parts = [compose(c, state.rows(slice(bounds[i], bounds[i + 1])), composer) for i, c in enumerate(children)]
    return type(state).cat(parts, dim=0)


def _bounds(sizes: Sequence[int]) -> list[int]:
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return bounds


def _batch_split(block: BatchSplit, state: S, composer: Composer[S]) -> S:
    if sum(block.batch_sizes) != state.batch_size:
        raise ValueError(
            f"{block!r} has batch_sizes {block.batch_sizes} (sum {sum(block.batch_sizes)}) but the batch has "
            f"{state.batch_size} rows"
        )
    return _by_rows(block.children, _bounds(block.batch_sizes), state, composer)


def _parallel(block: Parallel, state: S, composer: Composer[S]) -> S:
    channels = len(block)
    if state.batch_size % channels:
        raise ValueError(f"{block!r}: a batch of {state.batch_size} rows cannot hold {channels} channels")
    per = state.batch_size // channels
    return _by_rows(block.children, [i * per for i in range(channels + 1)], state, composer)


def _split(block: Split, state: S, composer: Composer[S]) -> S:
    if state.seq_len is not None and sum(block.splits) != state.seq_len:  # None: whole-row values
        raise ValueError(
            f"{block!r} has splits {block.splits} (sum {sum(block.splits)}) but the sequence has {state.seq_len} tokens"
        )
    bounds = _bounds(block.splits)
    parts = [compose(c, state.tokens(slice(bounds[i], bounds[i + 1])), composer) for i, c in enumerate(block)]
    return type(state).cat(parts, dim=1)


def _average(block: Average, state: S, composer: Composer[S]) -> S:
    outputs = [compose(child, state, composer) for child in block]
    return type(state).weighted_sum(outputs, block.weights, state)


def _fuse(block: Fuse, state: S, composer: Composer[S]) -> S:
    return composer.fuse(block, state, lambda child, st: compose(child, st, composer))


def route(groups: RowGroups, state: S, composer: Composer[S]) -> S:
    """Rows grouped by target: ``groups.targets[i]`` runs on rows ``groups.rows[i]``; the rows come
    back in their original order."""
    fast = composer.route(groups, state)
    if fast is not None:
        return fast
    if groups.contiguous is not None:
        return _by_rows(groups.targets, groups.contiguous, state, composer)
    parts = [compose(t, state.rows(idx), composer) for t, idx in zip(groups.targets, groups.rows, strict=True)]
    return type(state).cat(parts, dim=0).rows(groups.inverse)


def _multi_task(block: MultiTask, state: S, composer: Composer[S]) -> S:
    ctx = ForwardContext.get_context()
    groups = ctx.task_groups(block, state.batch_size) if ctx is not None else None
    if groups is None:
        raise ValueError(f"{block!r} needs the forward argument task_ids (one child index or name per row)")
    return route(groups, state, composer)


_RUNNERS: dict[type[AdapterCompositionBlock], Callable] = {
    Stack: _stack,
    BatchSplit: _batch_split,
    Parallel: _parallel,
    Split: _split,
    Average: _average,
    Fuse: _fuse,
    MultiTask: _multi_task,
}


def run_setup(ctx: ForwardContext, state: S, composer: Composer[S]) -> S:
    """Run the forward's whole setup (its block, or its per-row routing) at one site."""
    if ctx.row_groups is not None:
        return route(ctx.row_groups, state, composer)
    return compose(ctx.setup, state, composer)


# ---- per-row plans for sites that act once per forward ---------------------------------------------
class RowValues(SiteState):
    """One plain value per batch row: what a site that acts once per forward (at the embeddings, before
    any layer) does to each row, found by running the setup on these values instead of on tensors.

    Token cuts keep the whole row (such sites act on whole rows); `Average` and `Split` keep their
    first child's values, AdapterHub's ``first()`` for blocks that do not divide rows.
    """

    def __init__(self, values: list, tokens: int | None = None):
        self.values = values
        self._tokens = tokens

    @property
    def batch_size(self) -> int:
        return len(self.values)

    @property
    def seq_len(self) -> int | None:  # type: ignore[override]
        return self._tokens

    def rows(self, index: Rows) -> RowValues:
        if isinstance(index, slice):
            return RowValues(self.values[index], self._tokens)
        return RowValues([self.values[i] for i in index.tolist()], self._tokens)

    def tokens(self, index: slice) -> RowValues:
        return self

    @classmethod
    def cat(cls, states: Sequence[RowValues], dim: int) -> RowValues:
        if dim == 1:
            return states[0]
        return RowValues([v for s in states for v in s.values], states[0]._tokens)

    @classmethod
    def weighted_sum(cls, states: Sequence[RowValues], weights: Sequence[float], start: RowValues) -> RowValues:
        return states[0]


class _PlanComposer(Composer[RowValues]):
    def __init__(self, present: Container[str], step: Callable[[object, str], object]):
        self.present = present  # type: ignore[assignment]
        self.step = step

    def single(self, name: str, state: RowValues) -> RowValues:
        return RowValues([self.step(value, name) for value in state.values], state.seq_len)

    def fuse(self, block: Fuse, state: RowValues, run: Callable[[object, RowValues], RowValues]) -> RowValues:
        for child in block:
            state = run(child, state)
        return state


def row_plan(
    ctx: ForwardContext,
    batch_size: int,
    present: Container[str],
    step: Callable[[object, str], object],
    start: object = None,
    tokens: int | None = None,
) -> list:
    """Per-row values of the forward's setup: each row starts at ``start`` and every adapter on the row's
    path through the setup (in order; only names in ``present``) updates it, ``value = step(value, name)``.

    Examples: ``step=lambda v, n: v if v is not None else n`` gives each row's first adapter;
    ``step=lambda v, n: (*v, n)`` with ``start=()`` lists them. Row-dividing blocks (BatchSplit, Parallel,
    MultiTask, per-row routing) give rows their own values; ``batch_size`` counts `Parallel`'s copies.

    Raises:
        ValueError: as `compose` (e.g. a BatchSplit whose sizes do not add up to ``batch_size``).
    """
    state = RowValues([start] * batch_size, tokens)
    return run_setup(ctx, state, _PlanComposer(present, step)).values
