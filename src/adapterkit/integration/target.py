"""`ModelTarget`: one adapter-enabled model seen through its architecture table entry.

It resolves table paths to modules, numbers the layers, and installs the context guards: hooks on
the model root and on each layer that open a `ForwardContext` for a forward when none is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..composition import AdapterCompositionBlock
from ..context import AdapterSetup, ForwardContext
from .architectures import ArchitectureSpec, get_architecture
from .modules import get_submodule

SetupResolver = Callable[[], tuple[AdapterCompositionBlock | None, frozenset[int]]]


class ModelTarget:
    """The attach points of one model.

    Args:
        base_model: the transformers base model (``model.base_model``).
        spec: its architecture entry; looked up from ``config.model_type`` when None.
        resolve_setup: returns the model's stored (setup, skip_layers); an `AdapterSetup` block
            in force overrides the setup.

    Raises:
        ValueError: if the model type has no architecture entry.
        AttributeError: if a path of the entry does not exist in this model.
    """

    def __init__(
        self, base_model: nn.Module, resolve_setup: SetupResolver, spec: ArchitectureSpec | None = None
    ):
        self.base_model = base_model
        self.config = base_model.config
        self.spec = spec or get_architecture(self.config.model_type)
        self.resolve_setup = resolve_setup
        self.layers: list[nn.Module] = list(get_submodule(base_model, self.spec.layers))
        self.hidden_size: int = getattr(self.config, self.spec.hidden_size_attr)
        self._guard_handles: list[RemovableHandle] = []

    def layer_module(self, layer_idx: int, path: str) -> nn.Module:
        """The module at ``path`` inside layer ``layer_idx``."""
        return get_submodule(self.layers[layer_idx], path)

    # ---- forward context -------------------------------------------------------------------
    def open_context(self, owner: object) -> ForwardContext | None:
        """Open a forward context owned by ``owner`` unless one is open already. Returns it if opened."""
        if ForwardContext.get_context() is not None:
            return None
        setup, skip_layers = self.resolve_setup()
        override = AdapterSetup.get_context()
        if override is not None:
            setup = override.adapter_setup
        ctx = ForwardContext(setup, skip_layers)
        ctx.enter(owner)
        return ctx

    def close_context(self, owner: object) -> None:
        """Close the current forward context if ``owner`` opened it."""
        ctx = ForwardContext.get_context()
        if ctx is not None:
            ctx.exit(owner)

    def install_context_guards(self, root: nn.Module) -> None:
        """Hook ``root`` and every layer so each forward runs inside a forward context.

        The layer guards matter when a layer runs on its own, e.g. when gradient checkpointing
        recomputes it during the backward pass.
        """
        self.remove_context_guards()
        for module in [root, *self.layers]:
            self._guard_handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._guard_handles.append(module.register_forward_hook(self._post_hook, always_call=True))

    def remove_context_guards(self) -> None:
        """Remove the hooks installed by :meth:`install_context_guards`."""
        for handle in self._guard_handles:
            handle.remove()
        self._guard_handles.clear()

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        self.open_context(module)

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.close_context(module)
