"""Composition blocks: how several adapters combine in one forward.

A setup is a tree of blocks whose leaves are adapter names (or ``None``, the identity: no adapter,
allowed where a block splits rows). Blocks only describe; `methods.compose` runs them at every
adapter site, for every method, through the method's state primitives.

| block | what a site does with its state |
|---|---|
| `Stack(a, b)` | ``b(a(x))`` |
| `Fuse(a, b)` | AdapterFusion attention over the children's outputs (bottleneck adapters) |
| `Split(a, b, splits=[s1, s2])` | child i gets tokens ``[sum(s[:i]), sum(s[:i+1]))`` |
| `BatchSplit(a, b, batch_sizes=[n1, n2])` | child i gets batch rows ``[sum(n[:i]), sum(n[:i+1]))`` |
| `Parallel(a, b)` | the batch is replicated once per child; child i gets copy i (one output per head) |
| `Average(a, b, weights=[w1, w2])` | ``sum_i w_i child_i(x)``: weights applied once |
| `MultiTask(a, b)` | row j goes to child ``task_ids[j]`` (a forward argument) |
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Union

Child = Union["AdapterCompositionBlock", str, None]
AdapterSetupSpec = Union["AdapterCompositionBlock", str, Sequence[str], None]


class AdapterCompositionBlock(Sequence):
    """A node of an adapter setup: an ordered tuple of adapter names or nested blocks.

    Args:
        children: adapter names (str), nested blocks, or None (identity) where the block allows it.

    Raises:
        TypeError: if a child is neither a str, a block, nor an allowed None.
    """

    def __init__(self, *children: Child) -> None:
        for child in children:
            if child is None and not self.allows_identity:
                raise TypeError(f"{type(self).__name__} cannot contain None (identity channels need Parallel, "
                                "BatchSplit or MultiTask)")
            if child is not None and not isinstance(child, (str, AdapterCompositionBlock)):
                raise TypeError(
                    f"{type(self).__name__} children must be adapter names or blocks, got {type(child).__name__}"
                )
        if not children:
            raise ValueError(f"{type(self).__name__} needs at least one child")
        self.children: tuple[Child, ...] = tuple(children)

    allows_identity = False

    def __getitem__(self, index: int) -> Child:  # type: ignore[override]
        return self.children[index]

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self) -> Iterator[Child]:
        return iter(self.children)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        kwargs = sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self._save_kwargs().items())
        return (type(self).__name__, self.children, tuple(kwargs))  # hashable: list kwargs become tuples

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{', '.join(str(c) for c in self.children)}]"

    def first(self) -> str | None:
        """Name of the first adapter reached by depth-first descent (None for an identity child)."""
        child = self.children[0]
        return child.first() if isinstance(child, AdapterCompositionBlock) else child

    def last(self) -> str | None:
        """Name of the last adapter reached by depth-first descent (None for an identity child)."""
        child = self.children[-1]
        return child.last() if isinstance(child, AdapterCompositionBlock) else child

    def flatten(self) -> frozenset[str]:
        """All adapter names in this block and its descendants."""
        names: set[str] = set()
        for child in self.children:
            if isinstance(child, str):
                names.add(child)
            elif child is not None:
                names.update(child.flatten())
        return frozenset(names)

    @property
    def parallel_channels(self) -> int:
        """How many copies of the batch this setup runs (1 without `Parallel`)."""
        return max(c.parallel_channels if isinstance(c, AdapterCompositionBlock) else 1 for c in self.children)

    def _save_kwargs(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's serialised form: ``{"type": "Stack", "children": [...], "kwargs": {...}}``."""
        data: dict[str, Any] = {
            "type": type(self).__name__,
            "children": [
                c.to_dict() if isinstance(c, AdapterCompositionBlock) else {"type": "single", "children": [c]}
                for c in self.children
            ],
        }
        if kwargs := self._save_kwargs():
            data["kwargs"] = kwargs
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterCompositionBlock | str | None:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: for an unknown block type.
        """
        kind = data["type"]
        if kind == "single":
            return data["children"][0]
        block_cls = BLOCK_TYPES.get(kind)
        if block_cls is None:
            raise ValueError(f"unknown composition block {kind!r}; known: {sorted(BLOCK_TYPES)}")
        return block_cls(*[cls.from_dict(c) for c in data["children"]], **data.get("kwargs", {}))


class Stack(AdapterCompositionBlock):
    """Apply the children one after another in every layer: the output of child i feeds child i+1.

    Bottleneck adapters: each stacked adapter takes the previous adapter's output as its input and
    residual (MAD-X's language -> task). LoRA and (IA)^3: each stacked adapter updates the projection
    output in turn, ``y <- y + s B A x`` or ``y <- y * l``, all on the same projection input ``x``
    (AdapterHub chains LoRA deltas instead, which only works for square projections).
    """


class Fuse(AdapterCompositionBlock):
    """AdapterFusion (Pfeiffer et al., 2021): attention over the children's bottleneck outputs.

    Args:
        children: adapter names or Stacks.
        name: the fusion layer's name; default ``"a,b,c"`` (the last adapter of each child).
    """

    def __init__(self, *children: str | AdapterCompositionBlock, name: str | None = None) -> None:
        super().__init__(*children)
        default = ",".join(c if isinstance(c, str) else str(c.last()) for c in self.children)
        self._name = name if name != default else None  # the default name is not a custom one

    @property
    def name(self) -> str:
        """The fusion layer's name."""
        return self._name or ",".join(c if isinstance(c, str) else str(c.last()) for c in self.children)

    def _save_kwargs(self) -> dict[str, Any]:
        return {"name": self._name} if self._name else {}


class Split(AdapterCompositionBlock):
    """Split the sequence: child i gets tokens ``[sum(splits[:i]), sum(splits[:i+1]))``.

    Args:
        children: adapter names or blocks.
        splits: tokens per child (an int is used for every child); must sum to the sequence length.
    """

    def __init__(self, *children: str | AdapterCompositionBlock, splits: int | list[int]) -> None:
        super().__init__(*children)
        self.splits = _sizes(splits, len(children), "splits")

    def _save_kwargs(self) -> dict[str, Any]:
        return {"splits": list(self.splits)}


class BatchSplit(AdapterCompositionBlock):
    """Split the batch: child i gets rows ``[sum(batch_sizes[:i]), sum(batch_sizes[:i+1]))``.

    Args:
        children: adapter names, blocks, or None (those rows run without adapters).
        batch_sizes: rows per child (an int is used for every child); must sum to the batch size.
    """

    allows_identity = True

    def __init__(self, *children: Child, batch_sizes: int | list[int]) -> None:
        super().__init__(*children)
        self.batch_sizes = _sizes(batch_sizes, len(children), "batch_sizes")

    def _save_kwargs(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes)}


class Parallel(AdapterCompositionBlock):
    """Run every child on its own copy of the input in one forward (Rücklé et al., 2021, AdapterDrop).

    The batch is replicated once per child at the first layer that has one of the children's
    adapters, so the layers below run once. A None child is the base model without adapters.
    Models with flexible heads return a `MultiHeadOutput`, one output per child.
    """

    allows_identity = True

    @property
    def parallel_channels(self) -> int:
        return len(self.children)


class Average(AdapterCompositionBlock):
    """A weighted sum of the children's outputs, ``sum_i w_i child_i(x)``.

    Args:
        children: adapter names or blocks.
        weights: one weight per child; default ``1 / N`` each.
        normalize_weights: rescale the weights to sum to 1.

    AdapterHub computes ``mean_i(w_i child_i(x))``, dividing by N a second time; here the weights
    are applied once, so ``Average(a, b)`` is the plain mean.
    """

    def __init__(
        self,
        *children: str | AdapterCompositionBlock,
        weights: list[float] | None = None,
        normalize_weights: bool = True,
    ) -> None:
        super().__init__(*children)
        self.weights = combination_weights(len(children), weights, normalize_weights, "Average", "children")

    def _save_kwargs(self) -> dict[str, Any]:
        return {"weights": list(self.weights)}


class MultiTask(AdapterCompositionBlock):
    """Route each row to a child by the forward argument ``task_ids``.

    ``task_ids`` is an int tensor of child indices (training) or a list of child names (inference).
    A None child is the base model without adapters.
    """

    allows_identity = True


def combination_weights(
    count: int, weights: Sequence[float] | None, normalize: bool, owner: str, items: str
) -> list[float]:
    """The weights of a combination of ``count`` items: ``1 / count`` each by default, else ``weights``
    (divided by their sum when ``normalize``). Shared by `Average` and parameter averaging.

    Raises:
        ValueError: ``"<owner> got <k> weights for <count> <items>"``, or weights that sum to 0 when normalizing.
    """
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{owner} got {len(weights)} weights for {count} {items}")
    total = float(sum(weights))
    if normalize and total == 0:
        raise ValueError(f"{owner} weights {list(weights)} sum to 0 and cannot be normalized")
    return [float(w) / total for w in weights] if normalize else [float(w) for w in weights]


def _sizes(value: int | Sequence[int], n: int, what: str) -> list[int]:
    sizes = [value] * n if isinstance(value, int) else list(value)
    if len(sizes) != n or any(not isinstance(s, int) or s < 0 for s in sizes):
        raise ValueError(f"{what} must be an int or {n} non-negative ints (one per child), got {value!r}")
    return sizes


BLOCK_TYPES: dict[str, type[AdapterCompositionBlock]] = {
    b.__name__: b for b in (Stack, Fuse, Split, BatchSplit, Parallel, Average, MultiTask)
}

# block type -> what it may contain ("str": adapter names, None: identity). AdapterHub's table, plus
# Fuse inside Parallel (AdapterHub issue #268) and identity children (issue #566).
ALLOWED_NESTINGS: dict[type[AdapterCompositionBlock], tuple[type | str | None, ...]] = {
    Stack: ("str", Fuse, Split, Parallel, BatchSplit, Average, MultiTask),
    Fuse: ("str", Stack),
    Split: ("str", Split, Stack, BatchSplit, Average),
    Parallel: ("str", None, Stack, Fuse, BatchSplit, Average),
    MultiTask: ("str", None, Stack, Fuse, Split, BatchSplit, Average),
    BatchSplit: ("str", None, Stack, Split, BatchSplit, Average),
    Average: ("str", Stack, Split, BatchSplit),
}


def parse_composition(setup: AdapterSetupSpec) -> AdapterCompositionBlock | None:
    """Normalise a user's setup: ``None``/empty -> None, ``"a"`` -> ``Stack("a")``, ``"a,b"`` or a list -> Stack.

    Raises:
        TypeError: if ``setup`` is of an unsupported type.
        ValueError: if a block nests a child that is not allowed there, or `Parallel` sits below the
            top level (it may only be the setup or a child of the top-level Stack).
    """
    if setup is None or (isinstance(setup, (str, Sequence)) and len(setup) == 0):
        return None
    if isinstance(setup, str):
        block: AdapterCompositionBlock = Stack(*[s.strip() for s in setup.split(",")])
    elif isinstance(setup, AdapterCompositionBlock):
        block = setup
    elif isinstance(setup, Sequence):
        block = Stack(*setup)
    else:
        raise TypeError(f"an adapter setup must be a name, a list of names or a block, got {type(setup).__name__}")
    _validate_nesting(block, depth=0)
    return block


def _validate_nesting(block: AdapterCompositionBlock, depth: int) -> None:
    allowed = ALLOWED_NESTINGS[type(block)]
    for child in block:
        kind: type | str | None = "str" if isinstance(child, str) else None if child is None else type(child)
        if kind not in allowed:
            names = [a if isinstance(a, str) else "None" if a is None else a.__name__ for a in allowed]
            raise ValueError(f"{type(block).__name__} cannot contain {child!r}; allowed children: {names}")
        if isinstance(child, Parallel) and not (depth == 0 and isinstance(block, Stack)):
            raise ValueError(
                f"Parallel may only be the whole setup or a child of the top-level Stack, not inside {block!r}"
            )
        if isinstance(child, AdapterCompositionBlock):
            _validate_nesting(child, depth + 1)


def head_setup_of(setup: AdapterCompositionBlock) -> str | list[str | None] | None:
    """The head(s) a setup implies: one per `Parallel` channel (the channel's last adapter, a Fuse's
    name when that names a head is decided by the caller), else the setup's last adapter."""
    parallel = setup if isinstance(setup, Parallel) else None
    if parallel is None and isinstance(setup, Stack):
        parallel = next((c for c in setup.children if isinstance(c, Parallel)), None)
    if parallel is not None:
        return [c.last() if isinstance(c, AdapterCompositionBlock) else c for c in parallel.children]
    return setup.last()
