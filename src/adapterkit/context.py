"""Per-forward state in context variables, so concurrent threads and asyncio tasks stay separate.

`AdapterSetup` overrides the active adapters (and head) for code run inside a ``with`` block.
`ForwardContext` holds what one forward pass needs: the resolved setup, scratch tensors that
hooks pass between each other (e.g. the residual of a sub-block), and per-call options.
Both live in :class:`contextvars.ContextVar`, which every thread and every asyncio task sees
separately; a context is created fresh for each forward and reset when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

import torch

from .composition import AdapterCompositionBlock, AdapterSetupSpec, Stack, head_setup_of, parse_composition

_adapter_setup: ContextVar[AdapterSetup | None] = ContextVar("adapterkit_adapter_setup", default=None)
_forward_context: ContextVar[ForwardContext | None] = ContextVar("adapterkit_forward_context", default=None)


class AdapterSetup:
    """Activate adapters (and optionally a head) for the code inside a ``with`` block.

    It changes neither the model's stored active adapters nor which parameters train, and nests:
    the innermost block wins.

    Args:
        adapter_setup: an adapter name, list of names or composition block.
        head_setup: a head name (or one per `Parallel` channel); by default the head(s) the setup
            implies: its last adapter, or each Parallel channel's last adapter.
        ignore_empty: with an empty ``adapter_setup``, do nothing instead of deactivating adapters.
    """

    def __init__(
        self,
        adapter_setup: AdapterSetupSpec,
        head_setup: str | list[str | None] | None = None,
        ignore_empty: bool = False,
    ):
        self.adapter_setup: AdapterCompositionBlock | None = parse_composition(adapter_setup)
        self.head_setup_given = head_setup is not None  # else derived: models may refine it (e.g. Fuse heads)
        if head_setup is None and self.adapter_setup is not None:
            head_setup = head_setup_of(self.adapter_setup)
        self.head_setup = head_setup
        self._skip = ignore_empty and self.adapter_setup is None
        self._tokens: list[Token] = []

    def __enter__(self) -> AdapterSetup:
        if not self._skip:
            self._tokens.append(_adapter_setup.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._skip:
            _adapter_setup.reset(self._tokens.pop())

    @staticmethod
    def get_context() -> AdapterSetup | None:
        """The innermost active `AdapterSetup` of this thread/task, or None."""
        return _adapter_setup.get()


@dataclass(frozen=True)
class RowGroups:
    """Batch rows grouped by the adapter setup each runs (per-row routing, `MultiTask`).

    Attributes:
        targets: one adapter name, block or None (no adapter) per group.
        rows: the row indices of each group (1-D long tensors).
        inverse: the permutation that restores row order after concatenating the groups.
        contiguous: group boundaries when the groups are consecutive row ranges in order (then rows
            are cut by slices, which copies nothing), else None.
    """

    targets: tuple[Any, ...]
    rows: tuple[torch.Tensor, ...]
    inverse: torch.Tensor
    contiguous: list[int] | None

    @staticmethod
    def from_rows(per_row: Sequence[Any], device: torch.device | None = None) -> RowGroups:
        """Group ``per_row`` (one target per row) by target, in order of first appearance."""
        order: dict[Any, list[int]] = {}
        for i, target in enumerate(per_row):
            order.setdefault(target, []).append(i)
        targets = tuple(order)
        rows = tuple(torch.tensor(idx, dtype=torch.long, device=device) for idx in order.values())
        flat = [i for idx in order.values() for i in idx]
        contiguous = None
        if flat == list(range(len(per_row))):
            contiguous = [0]
            for idx in order.values():
                contiguous.append(contiguous[-1] + len(idx))
        inverse = torch.empty(len(flat), dtype=torch.long, device=device)
        inverse[torch.tensor(flat, dtype=torch.long, device=device)] = torch.arange(len(flat), device=device)
        return RowGroups(targets, rows, inverse, contiguous)


class ForwardContext:
    """State of one forward pass through an adapter-enabled model.

    Attributes:
        setup: the adapter setup in force for this forward (None: no adapters run).
        skip_layers: layer ids in which no adapter runs.
        row_groups: per-row routing (the ``adapter_names`` forward argument), overriding ``setup``.
        task_ids: the ``task_ids`` forward argument (for `MultiTask`).
        flat_names: the setup's names when it is a Stack of adapter names (the common case, run
            without the composition machinery), else None.
        parallel_channels: copies of the batch the setup needs (1 without `Parallel`).
        original_batch_size: rows before `Parallel` replication (set when the model input is seen).
        replicated: whether the batch flowing through the layers is already replicated.
        scratch: values that hooks of one layer hand to each other, keyed by the hooks' owners.
        options: per-call flags such as ``output_adapter_fusion_attentions``.
        outputs: per-call results that hooks collect (fusion attentions, gating scores).
        attention_mask: the forward's padding mask as given to the model (``(rows, tokens)``, 1 = real
            token; a multiple-choice ``(batch, choices, tokens)`` mask is flattened to rows), or None.
            Methods that extend the sequence (prompt tuning) keep it up to date.
        head_rows: while a prediction head runs on some rows of the base model output (one head per
            `Parallel` channel, `BatchSplit` part or routed group), those rows (a slice or an index
            tensor); None while a head sees every row.
    """

    def __init__(
        self,
        setup: AdapterCompositionBlock | None,
        skip_layers: frozenset[int] = frozenset(),
        row_groups: RowGroups | None = None,
        task_ids: Any = None,
    ):
        self.setup = setup
        self.row_groups = row_groups
        self.task_ids = task_ids
        if row_groups is not None:
            names = set()
            for target in row_groups.targets:
                if isinstance(target, str):
                    names.add(target)
                elif target is not None:
                    names.update(target.flatten())
            self.active_names: frozenset[str] = frozenset(names)
        else:
            self.active_names = setup.flatten() if setup is not None else frozenset()
        self.flat_names: tuple[str, ...] | None = None
        if row_groups is None and isinstance(setup, Stack) and all(isinstance(c, str) for c in setup):
            self.flat_names = setup.children  # type: ignore[assignment]
        self.parallel_channels = setup.parallel_channels if setup is not None and row_groups is None else 1
        self.original_batch_size: int | None = None
        self.replicated = False
        self.skip_layers = skip_layers
        self.scratch: dict[Any, Any] = {}
        self.options: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.attention_mask: torch.Tensor | None = None
        self.head_rows: slice | torch.Tensor | None = None
        self._task_groups: dict[int, RowGroups] = {}
        self._token: Token | None = None
        self._owner: object | None = None

    @staticmethod
    def get_context() -> ForwardContext | None:
        """The forward context of the forward running in this thread/task, or None."""
        return _forward_context.get()

    def task_groups(self, block: AdapterCompositionBlock, batch_size: int) -> RowGroups | None:
        """`MultiTask` rows grouped by child, from ``task_ids`` (child indices or names); None without them.

        Raises:
            ValueError: for a task id that names no child, or a length that is not the batch size.
        """
        if self.task_ids is None:
            return None
        key = id(block)
        if key not in self._task_groups:
            ids = self.task_ids
            children = list(block.children)
            if isinstance(ids, torch.Tensor):
                ids = ids.tolist()
            per_row = []
            for task in ids:
                if isinstance(task, str) or task is None:
                    if task not in children:
                        raise ValueError(f"task id {task!r} names no child of {block!r}")
                    per_row.append(task)
                elif isinstance(task, int) and 0 <= task < len(children):
                    per_row.append(children[task])
                else:
                    raise ValueError(f"task id {task!r} is not a child index (0..{len(children) - 1}) of {block!r}")
            self._task_groups[key] = RowGroups.from_rows(per_row)
        groups = self._task_groups[key]
        if len(groups.inverse) != batch_size:
            raise ValueError(f"task_ids has {len(groups.inverse)} entries for a batch of {batch_size} rows")
        return groups

    def enter(self, owner: object) -> None:
        """Make this the current context; ``owner`` is the object that must call :meth:`exit`."""
        self._owner = owner
        self._token = _forward_context.set(self)

    def exit(self, owner: object) -> bool:
        """Reset to the previous context if ``owner`` entered this one. Returns whether it did."""
        if self._owner is not owner or self._token is None:
            return False
        _forward_context.reset(self._token)
        self._token = None
        return True


@contextlib.contextmanager
def _reentered(ctx: ForwardContext | None) -> Iterator[None]:
    """Make ``ctx`` current again (for a recomputation that runs after its forward ended)."""
    if ctx is None or _forward_context.get() is not None:
        yield
        return
    token = _forward_context.set(ctx)
    try:
        yield
    finally:
        _forward_context.reset(token)


def checkpoint_context_fn() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """``context_fn`` for ``torch.utils.checkpoint``: the recomputation in the backward pass runs
    inside the forward context of the original forward, so it applies the same adapters."""
    return contextlib.nullcontext(), _reentered(ForwardContext.get_context())
