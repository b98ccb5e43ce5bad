"""The method plugin interface and registry.

A method is a config class plus an `AdapterMethod` that knows where its modules attach (in terms
of the architecture table), which composition blocks it supports, and how it merges. The model
code looks methods up by ``config.method`` and never names one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Container, Mapping

import torch
from torch import nn

from ..composition import AdapterCompositionBlock, Average, BatchSplit, MultiTask, Parallel, Split, Stack
from ..configs import AdapterConfig
from ..context import ForwardContext
from ..integration.target import ModelTarget

LayerModules = dict[int, dict[str, nn.Module]]


class AdapterMethod(ABC):
    """How one adapter method attaches to a model.

    Attributes:
        name: registry key; configs name their method through ``config.method``.
        config_class: the config class this method accepts.
        supported_blocks: composition block types this method's adapters may sit in. The blocks that
            only cut and recombine rows or tokens run for every method through `methods.compose`;
            a method adds blocks that need its own code (bottleneck adapters: Fuse).
        module_attribute: the ModuleDict attribute holding this method's per-adapter modules
            (``"adapters"``, ``"loras"``); state-dict keys contain ``.<attribute>.<adapter name>.``.
    """

    name: str
    config_class: type[AdapterConfig]
    supported_blocks: tuple[type[AdapterCompositionBlock], ...] = (
        Stack,
        Split,
        BatchSplit,
        Parallel,
        Average,
        MultiTask,
    )
    module_attribute: str

    @property
    def module_attributes(self) -> tuple[str, ...]:
        """Every ModuleDict attribute whose ``.<attribute>.<adapter name>.`` state-dict keys belong to this
        method's adapters (saving and loading use all of them); ``module_attribute`` by default."""
        return (self.module_attribute,)

    def is_redundant_saved_key(self, key: str) -> bool:
        """Whether saved weight ``key`` repeats another saved weight and is skipped on load (AdapterHub
        writes some shared modules under several names); False by default."""
        return False

    def fit_loaded_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
        """Reconcile loaded tensors (keyed by ``model``'s state-dict names, changed in place) with this
        method's modules before they are copied in, e.g. another saved form of a parameter.

        Returns:
            Whether a module changed its parameters (the caller re-reads the state dict); False by default.
        """
        return False

    def validate_setup(  # noqa: B027  (optional hook: most methods need no extra checks)
        self, target: ModelTarget, setup: AdapterCompositionBlock, configs: Mapping[str, AdapterConfig]
    ) -> None:
        """Method-specific checks of an adapter setup, beyond the blocks each adapter may sit in (run when a
        setup is activated; ``configs`` maps adapter names to their configs). Default: none.

        Raises:
            ValueError: naming the adapter, the block and what is allowed.
        """

    @abstractmethod
    def add(self, target: ModelTarget, adapter_name: str, config: AdapterConfig) -> LayerModules:
        """Create the modules of ``adapter_name`` in every layer not left out, and hook them in.

        Returns:
            ``{layer_idx: {location_key: module}}`` of the modules created.

        Raises:
            ValueError: if the config cannot apply to this architecture (naming why).
        """

    @abstractmethod
    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        """Remove every module of ``adapter_name``, and the hooks no adapter needs any more."""

    @abstractmethod
    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        """``{layer_idx: {location_key: module}}`` of the modules of ``adapter_name``."""

    def shared_modules(self, target: ModelTarget, adapter_name: str) -> list[nn.Module]:
        """Modules of ``adapter_name`` that belong to no layer (e.g. parameters all its layers share, kept at
        the base model's ``shared_parameters``); they train, count and move with the adapter. [] by default."""
        return []

    def merge(self, target: ModelTarget, adapter_name: str) -> None:
        """Fold ``adapter_name`` into the base weights.

        Raises:
            ValueError: if this method cannot be merged.
        """
        raise ValueError(f"adapters of method {self.name!r} cannot be merged into the model weights")

    def reset(self, target: ModelTarget) -> None:  # noqa: B027  (optional hook: methods without merging keep it)
        """Undo every merge of this method, restoring the base weights exactly (default: nothing to undo)."""


def active_in_order(ctx: ForwardContext | None, present: Container[str], layer_idx: int) -> list[str]:
    """Names of the adapters to run at one location, in order, when the setup is a plain Stack of
    names (the common case, which sites run directly); [] otherwise.

    Args:
        ctx: the current forward context (None: nothing runs).
        present: the adapter names that have modules at this location.
        layer_idx: the layer of this location (skipped layers run nothing).
    """
    if ctx is None or ctx.flat_names is None or layer_idx in ctx.skip_layers:
        return []
    return [name for name in ctx.flat_names if name in present]


def composed_here(ctx: ForwardContext | None, present: Container[str], layer_idx: int) -> bool:
    """Whether a setup that is not a plain Stack of names (or per-row routing) has an adapter at
    this location; such setups run through `methods.compose.run_setup`."""
    if ctx is None or ctx.flat_names is not None or layer_idx in ctx.skip_layers:
        return False
    if ctx.setup is None and ctx.row_groups is None:
        return False
    return any(name in present for name in ctx.active_names)


_METHODS: dict[str, AdapterMethod] = {}


def register_method(method: AdapterMethod) -> AdapterMethod:
    """Register ``method`` under ``method.name`` (replacing an earlier registration of that name)."""
    _METHODS[method.name] = method
    return method


def method_for(config: AdapterConfig) -> AdapterMethod:
    """The registered method that handles ``config``.

    Raises:
        ValueError: if no registered method handles it.
    """
    method = _METHODS.get(config.method)
    if method is None:
        raise ValueError(
            f"no adapter method handles {type(config).__name__} (method {config.method!r}); "
            f"registered: {sorted(_METHODS)}"
        )
    return method


def registered_methods() -> list[AdapterMethod]:
    """All registered methods."""
    return list(_METHODS.values())
