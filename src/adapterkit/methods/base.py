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
    union_repeatable: bool = False
    """Whether one config union may hold several configs of this method (at disjoint layers or locations:
    bottleneck configs at different locations, configs with different ``leave_out``); the method's modules of
    one adapter name must then be independent per layer and location."""

    def for_config(self, config: AdapterConfig) -> AdapterMethod:
        """The method object that serves ``config``: ``self`` by default; a method whose behaviour depends on
        the config (a config union: the blocks all its parts support) returns one bound to it."""
        return self

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

    def average(
        self,
        target: ModelTarget,
        adapter_name: str,
        config: AdapterConfig,
        weights: Mapping[str, float],
        combine_strategy: str = "linear",
        svd_rank: int | None = None,
    ) -> None:
        """Set the parameters of the new adapter ``adapter_name`` (already added with ``config``) from the
        adapters in ``weights`` (name -> weight, already normalised).

        Default: ``"linear"`` only, ``theta = sum_i w_i theta_i`` for every tensor of every module (those in
        the layers and the shared ones), matched by layer, location and state-dict key. Methods with more
        strategies override this.

        Raises:
            ValueError: for another strategy, or an adapter whose modules do not match the new one's (naming it).
        """
        check_strategy(self, combine_strategy, ("linear",))
        sources = {name: adapter_modules_by_place(self, target, name) for name in weights}
        average_modules(adapter_modules_by_place(self, target, adapter_name), sources, weights, adapter_name)


def check_strategy(method: AdapterMethod, combine_strategy: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` if ``method`` cannot average with ``combine_strategy`` (naming what is allowed)."""
    if combine_strategy not in allowed:
        raise ValueError(
            f"combine_strategy {combine_strategy!r} is not supported for {method.name} adapters; "
            f"allowed: {list(allowed)}"
        )


def adapter_modules_by_place(method: AdapterMethod, target: ModelTarget, adapter_name: str) -> dict[str, nn.Module]:
    """Every module of ``adapter_name`` under ``method``, keyed ``"<layer>.<location>"`` (and ``"shared.<i>"``)."""
    found = {
        f"{idx}.{location}": module
        for idx, per_layer in method.modules(target, adapter_name).items()
        for location, module in per_layer.items()
    }
    found.update({f"shared.{i}": m for i, m in enumerate(method.shared_modules(target, adapter_name))})
    return found


def average_modules(
    new: Mapping[str, nn.Module],
    sources: Mapping[str, Mapping[str, nn.Module]],
    weights: Mapping[str, float],
    new_name: str,
) -> None:
    """Load ``sum_i weights[i] * state(sources[i][place])`` into ``new[place]`` for every place.

    Non-floating tensors (counters, masks) are taken from the first source.

    Raises:
        ValueError: if a source has other places, keys or shapes than ``new`` (naming the adapter).
    """
    for name, modules in sources.items():
        if set(modules) != set(new):
            diff = sorted(set(modules) ^ set(new))[:4]
            raise ValueError(
                f"cannot average adapter {name!r} into {new_name!r}: their modules differ at {diff} "
                "(layers or locations); average adapters of one config"
            )
    with torch.no_grad():
        for place, module in new.items():
            averaged: dict[str, torch.Tensor] = {}
            for name, weight in weights.items():
                for key, value in sources[name][place].state_dict().items():
                    if key not in averaged:
                        averaged[key] = value * weight if value.is_floating_point() else value.clone()
                    elif value.shape != averaged[key].shape:
                        raise ValueError(
                            f"cannot average adapter {name!r} into {new_name!r}: {place}.{key} has shape "
                            f"{tuple(value.shape)}, expected {tuple(averaged[key].shape)}"
                        )
                    elif value.is_floating_point():
                        averaged[key] += value * weight
            try:
                module.load_state_dict(averaged)
            except RuntimeError as error:
                raise ValueError(f"cannot average into adapter {new_name!r} at {place}: {error}") from None


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
    return method.for_config(config)


def registered_methods() -> list[AdapterMethod]:
    """All registered methods."""
    return list(_METHODS.values())
