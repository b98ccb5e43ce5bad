"""Per-forward state in context variables, so concurrent threads and asyncio tasks stay separate.

`AdapterSetup` overrides the active adapters (and head) for code run inside a ``with`` block.
`ForwardContext` holds what one forward pass needs: the resolved setup, scratch tensors that
hooks pass between each other (e.g. the residual of a sub-block), and per-call options.
Both live in :class:`contextvars.ContextVar`, which every thread and every asyncio task sees
separately; a context is created fresh for each forward and reset when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any

from .composition import AdapterCompositionBlock, AdapterSetupSpec, parse_composition

_adapter_setup: ContextVar[AdapterSetup | None] = ContextVar("adapterkit_adapter_setup", default=None)
_forward_context: ContextVar[ForwardContext | None] = ContextVar("adapterkit_forward_context", default=None)


class AdapterSetup:
    """Activate adapters (and optionally a head) for the code inside a ``with`` block.

    It changes neither the model's stored active adapters nor which parameters train, and nests:
    the innermost block wins.

    Args:
        adapter_setup: an adapter name, list of names or composition block.
        head_setup: a head name; by default the head named after the setup's last adapter.
        ignore_empty: with an empty ``adapter_setup``, do nothing instead of deactivating adapters.
    """

    def __init__(
        self, adapter_setup: AdapterSetupSpec, head_setup: str | None = None, ignore_empty: bool = False
    ):
        self.adapter_setup: AdapterCompositionBlock | None = parse_composition(adapter_setup)
        if head_setup is None and self.adapter_setup is not None:
            head_setup = self.adapter_setup.last()
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


class ForwardContext:
    """State of one forward pass through an adapter-enabled model.

    Attributes:
        setup: the adapter setup in force for this forward (None: no adapters run).
        skip_layers: layer ids in which no adapter runs.
        scratch: values that hooks of one layer hand to each other, keyed by the hooks' owners.
        options: per-call flags (reserved for options such as gating-score output).
    """

    def __init__(self, setup: AdapterCompositionBlock | None, skip_layers: frozenset[int] = frozenset()):
        self.setup = setup
        self.active_names: frozenset[str] = setup.flatten() if setup is not None else frozenset()
        self.skip_layers = skip_layers
        self.scratch: dict[Any, Any] = {}
        self.options: dict[str, Any] = {}
        self._token: Token | None = None
        self._owner: object | None = None

    @staticmethod
    def get_context() -> ForwardContext | None:
        """The forward context of the forward running in this thread/task, or None."""
        return _forward_context.get()

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
