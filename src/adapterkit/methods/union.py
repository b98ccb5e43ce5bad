"""Config unions: one adapter name served by several methods (`ConfigUnion`, `MAMConfig`, `UniPELTConfig`).

`UnionMethod` is registered for ``config.method == "union"``; `method_for(union)` returns a copy bound to the
union (`for_config`) that delegates every operation to the methods of its parts, each under the adapter's
name. Each method's hooks then run the adapter's modules when the name is active, so activation, composition,
training, saving and loading work as for any adapter. Nothing here names a concrete method.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..composition import AdapterCompositionBlock, Average, BatchSplit, MultiTask, Parallel, Split, Stack
from ..configs import AdapterConfig, ConfigUnion
from ..integration.target import ModelTarget
from .base import AdapterMethod, LayerModules, check_strategy, method_for, register_method


class UnionMethod(AdapterMethod):
    """Delegates to the methods of a `ConfigUnion`'s parts (bound to one union by `for_config`).

    A union adapter may sit only in the composition blocks every part supports; its weights are saved in one
    file under every part method's module attributes.
    """

    name = "union"
    config_class = ConfigUnion
    module_attribute = "union"

    def __init__(self, config: ConfigUnion | None = None) -> None:
        self.config = config
        self.parts: list[tuple[AdapterMethod, AdapterConfig]] = (
            [(method_for(c), c) for c in config.configs] if config is not None else []
        )
        distinct: dict[str, AdapterMethod] = {}
        for method, _ in self.parts:
            distinct.setdefault(method.name, method)
        self.methods: list[AdapterMethod] = list(distinct.values())
        if self.methods:
            first = self.methods[0].supported_blocks
            self.supported_blocks = tuple(b for b in first if all(b in m.supported_blocks for m in self.methods))
            self.module_attribute = self.methods[0].module_attribute
        else:
            self.supported_blocks = (Stack, Split, BatchSplit, Parallel, Average, MultiTask)

    def for_config(self, config: AdapterConfig) -> AdapterMethod:
        """A `UnionMethod` bound to ``config`` (a `ConfigUnion`)."""
        if not isinstance(config, ConfigUnion):
            raise TypeError(f"the union method serves ConfigUnion configs, got {type(config).__name__}")
        return UnionMethod(config)

    @property
    def module_attributes(self) -> tuple[str, ...]:
        """Every part method's module attributes, in order, without repeats."""
        return tuple(dict.fromkeys(a for m in self.methods for a in m.module_attributes))

    def is_redundant_saved_key(self, key: str) -> bool:
        return any(m.is_redundant_saved_key(key) for m in self.methods)

    def fit_loaded_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
        changed = False
        for method in self.methods:
            changed = method.fit_loaded_weights(model, weights) or changed
        return changed

    def add(self, target: ModelTarget, adapter_name: str, config: AdapterConfig, **options: Any) -> LayerModules:  # type: ignore[override]
        """Add every part under ``adapter_name``, in order.

        Args:
            options: set-up options (e.g. ``tokenizer``), passed to the parts whose ``add`` takes them.

        Raises:
            ValueError: for two parts of a method that allows one per adapter, or two parts that cover the same
                layer and location (AdapterHub: "Multiple adapter definitions conflict").
            TypeError: for an option no part takes.
        """
        bound = self if self.config is config else UnionMethod(config)  # type: ignore[arg-type]
        used = set()
        for i, (method, part) in enumerate(bound.parts):
            accepted = {k: v for k, v in options.items() if _accepts(method.add, k)}
            used |= set(accepted)
            if method.name in {m.name for m, _ in bound.parts[:i]}:
                if not method.union_repeatable:
                    raise ValueError(
                        f"adapter {adapter_name!r}: its config union has several {method.name} configs; "
                        f"{method.name} allows one config per adapter"
                    )
                before = {(i, loc) for i, locs in method.modules(target, adapter_name).items() for loc in locs}
                added = method.add(target, adapter_name, part, **accepted)
                clash = sorted(before & {(i, loc) for i, locs in added.items() for loc in locs})
                if clash:
                    raise ValueError(
                        f"multiple adapter definitions conflict for adapter {adapter_name!r} in layer {clash[0][0]} "
                        f"({clash[0][1]}); use one {method.name} config per location and layer"
                    )
            else:
                method.add(target, adapter_name, part, **accepted)
        unused = sorted(set(options) - used)
        if unused:
            raise TypeError(f"add_adapter() got options {unused} that no part of adapter {adapter_name!r} takes")
        return bound.modules(target, adapter_name)

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        for method in self.methods:
            method.delete(target, adapter_name)

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        """The parts' modules, merged per layer (a location key two methods use is suffixed ``.<method>``)."""
        found: LayerModules = {}
        for method in self.methods:
            for idx, per_layer in method.modules(target, adapter_name).items():
                slot = found.setdefault(idx, {})
                for location, module in per_layer.items():
                    slot[location if location not in slot else f"{location}.{method.name}"] = module
        return dict(sorted(found.items()))

    def shared_modules(self, target: ModelTarget, adapter_name: str) -> list[nn.Module]:
        return [m for method in self.methods for m in method.shared_modules(target, adapter_name)]

    def merge(self, target: ModelTarget, adapter_name: str) -> None:
        """Merge the parts that can be merged (LoRA-like ones); the others keep running in the forward.

        Raises:
            ValueError: if no part can be merged, or as the part's own merge.
        """
        mergeable = [m for m in self.methods if type(m).merge is not AdapterMethod.merge]
        if not mergeable:
            raise ValueError(
                f"adapter {adapter_name!r} cannot be merged: none of its parts ({[m.name for m in self.methods]}) "
                "can be merged into the model weights"
            )
        for method in mergeable:
            method.merge(target, adapter_name)

    def eject(self, target: ModelTarget, adapter_name: str, config: ConfigUnion) -> ConfigUnion:
        """Eject the parts that can be ejected (prefix tuning) and return the union's new config.

        Raises:
            ValueError: if no part can be ejected.
        """
        parts = []
        for method, part in self.parts:
            eject = getattr(method, "eject", None)
            parts.append(eject(target, adapter_name, part) if eject is not None else part)
        if not any(hasattr(m, "eject") for m in self.methods):
            raise ValueError(
                f"adapter {adapter_name!r} is a union of {[m.name for m in self.methods]}; only prefix tuning "
                "adapters can be ejected"
            )
        return ConfigUnion(*parts)

    def validate_setup(
        self, target: ModelTarget, setup: AdapterCompositionBlock, configs: Mapping[str, AdapterConfig]
    ) -> None:
        """Run the part methods' own set-up checks with each union adapter seen as its part of that method."""
        names = setup.flatten()
        unions = {n: c for n, c in configs.items() if n in names and isinstance(c, ConfigUnion)}
        methods: dict[str, AdapterMethod] = {}
        for config in unions.values():
            for part in config.configs:
                methods.setdefault(part.method, method_for(part))
        for method_name, method in methods.items():
            seen = dict(configs)
            for name, config in unions.items():
                part = next((p for p in config.configs if p.method == method_name), None)
                if part is None:
                    del seen[name]
                else:
                    seen[name] = part
            method.validate_setup(target, setup, seen)

    def average(
        self,
        target: ModelTarget,
        adapter_name: str,
        config: AdapterConfig,
        weights: Mapping[str, float],
        combine_strategy: str = "linear",
        svd_rank: int | None = None,
    ) -> None:
        """Average every part linearly (as AdapterHub, unions support only ``"linear"``).

        Raises:
            ValueError: for another strategy, or as the parts' averaging.
        """
        check_strategy(self, combine_strategy, ("linear",))
        bound = self if self.config is config else UnionMethod(config)  # type: ignore[arg-type]
        for method in bound.methods:
            part = next(p for m, p in bound.parts if m is method)
            method.average(target, adapter_name, part, weights, "linear", None)


def _accepts(function: Any, key: str) -> bool:
    parameters = inspect.signature(function).parameters
    return key in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


register_method(UnionMethod())
