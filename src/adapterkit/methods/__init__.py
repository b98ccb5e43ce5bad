"""Adapter methods. Importing this package registers the built-in ones."""

from . import bottleneck, lora, prefix_tuning, prompt_tuning, reft, union  # noqa: F401  (registration side effect)
from .base import (
    AdapterMethod,
    LayerModules,
    active_in_order,
    method_for,
    register_method,
    registered_methods,
)
from .fusion import AdapterFusionLayer

__all__ = [
    "AdapterFusionLayer",
    "AdapterMethod",
    "LayerModules",
    "active_in_order",
    "method_for",
    "register_method",
    "registered_methods",
]
