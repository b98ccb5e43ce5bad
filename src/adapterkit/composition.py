"""Composition blocks: how several adapters combine in one forward.

This version provides `Stack` (sequential application, e.g. language then task adapter). The block
base class, serialisation and validation are shared by the blocks that follow (Fuse, Parallel, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Union

AdapterSetupSpec = Union["AdapterCompositionBlock", str, Sequence[str], None]


class AdapterCompositionBlock(Sequence):
    """A node of an adapter setup: an ordered tuple of adapter names or nested blocks.

    Args:
        children: adapter names (str) or nested blocks.

    Raises:
        TypeError: if a child is neither a str nor a block.
    """

    def __init__(self, *children: str | AdapterCompositionBlock) -> None:
        for child in children:
            if not isinstance(child, (str, AdapterCompositionBlock)):
                raise TypeError(
                    f"{type(self).__name__} children must be adapter names or blocks, got {type(child).__name__}"
                )
        self.children: tuple[str | AdapterCompositionBlock, ...] = tuple(children)

    def __getitem__(self, index: int) -> str | AdapterCompositionBlock:  # type: ignore[override]
        return self.children[index]

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self) -> Iterator[str | AdapterCompositionBlock]:
        return iter(self.children)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.children == other.children  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.children))

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{', '.join(str(c) for c in self.children)}]"

    def first(self) -> str:
        """Name of the first adapter reached by depth-first descent."""
        child = self.children[0]
        return child if isinstance(child, str) else child.first()

    def last(self) -> str:
        """Name of the last adapter reached by depth-first descent."""
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    def flatten(self) -> frozenset[str]:
        """All adapter names in this block and its descendants."""
        names: set[str] = set()
        for child in self.children:
            names.update([child] if isinstance(child, str) else child.flatten())
        return frozenset(names)

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's serialised form: ``{"type": "Stack", "children": [...]}``."""
        return {
            "type": type(self).__name__,
            "children": [
                {"type": "single", "children": [c]} if isinstance(c, str) else c.to_dict()
                for c in self.children
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterCompositionBlock | str:
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

    For bottleneck adapters each stacked adapter takes the previous adapter's output as its input
    and residual. For LoRA, the updates of the stacked adapters are summed on the same projection
    input (``y = W x + sum_i s_i B_i A_i x``), which is defined for any projection shape (AdapterHub
    chains them, which only works for square projections). For (IA)^3 the scales multiply.
    """


BLOCK_TYPES: dict[str, type[AdapterCompositionBlock]] = {"Stack": Stack}

# block type -> block types (and "str") allowed as its children
ALLOWED_NESTINGS: dict[type[AdapterCompositionBlock], tuple[type | str, ...]] = {Stack: ("str",)}


def parse_composition(setup: AdapterSetupSpec) -> AdapterCompositionBlock | None:
    """Normalise a user's setup: ``None``/empty -> None, ``"a"`` -> ``Stack("a")``, a list -> ``Stack(*list)``.

    Raises:
        TypeError: if ``setup`` is of an unsupported type.
        ValueError: if a block nests a child that is not allowed there.
    """
    if setup is None or (isinstance(setup, (str, Sequence)) and len(setup) == 0):
        return None
    if isinstance(setup, str):
        block: AdapterCompositionBlock = (
            Stack(*[s.strip() for s in setup.split(",")]) if "," in setup else Stack(setup)
        )
    elif isinstance(setup, AdapterCompositionBlock):
        block = setup
    elif isinstance(setup, Sequence):
        block = Stack(*setup)
    else:
        raise TypeError(
            f"an adapter setup must be a name, a list of names or a block, got {type(setup).__name__}"
        )
    _validate_nesting(block)
    return block


def _validate_nesting(block: AdapterCompositionBlock) -> None:
    allowed = ALLOWED_NESTINGS.get(type(block))
    if allowed is None:
        raise ValueError(f"composition block {type(block).__name__} is not available in this version")
    for child in block:
        kind: type | str = "str" if isinstance(child, str) else type(child)
        if kind not in allowed:
            names = [a if isinstance(a, str) else a.__name__ for a in allowed]
            raise ValueError(f"{type(block).__name__} cannot contain {child!r}; allowed children: {names}")
        if isinstance(child, AdapterCompositionBlock):
            _validate_nesting(child)
