"""Per-adapter modules shared by all layers, kept at ``<base model>.shared_parameters.<adapter>``.

AdapterHub keeps parameters that one adapter uses in every layer (Compacter's shared PHM rule and
weights, VeRA's frozen projections) in a ``shared_parameters`` ModuleDict on the base model, so their
state-dict keys are ``<base prefix>.shared_parameters.<adapter>.<tensor>``. These helpers create and
remove those entries; the ModuleDict exists only while it holds one.
"""

from __future__ import annotations

from torch import nn

from ..integration.target import ModelTarget

SHARED_ATTRIBUTE = "shared_parameters"
"""Attribute of the base model holding the shared modules (and the state-dict key segment)."""


def get_shared(target: ModelTarget, adapter_name: str) -> nn.Module | None:
    """The shared module of ``adapter_name``, or None."""
    shared = getattr(target.base_model, SHARED_ATTRIBUTE, None)
    if shared is None or adapter_name not in shared:
        return None
    return shared[adapter_name]


def set_shared(target: ModelTarget, adapter_name: str, module: nn.Module) -> None:
    """Register ``module`` as the shared module of ``adapter_name`` (replacing an existing one)."""
    shared = getattr(target.base_model, SHARED_ATTRIBUTE, None)
    if shared is None:
        shared = nn.ModuleDict()
        target.base_model.add_module(SHARED_ATTRIBUTE, shared)
    shared[adapter_name] = module


def delete_shared(target: ModelTarget, adapter_name: str) -> None:
    """Remove the shared module of ``adapter_name`` if there is one (and the ModuleDict once empty)."""
    shared = getattr(target.base_model, SHARED_ATTRIBUTE, None)
    if shared is None:
        return
    if adapter_name in shared:
        del shared[adapter_name]
    if len(shared) == 0:
        delattr(target.base_model, SHARED_ATTRIBUTE)
