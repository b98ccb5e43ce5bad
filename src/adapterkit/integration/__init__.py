"""How adapters reach into transformers models: the architecture table, attach points, hooks."""

from .architectures import (
    ARCHITECTURES,
    ArchitectureSpec,
    LayerStack,
    SubBlock,
    get_architecture,
    register_architecture,
)
from .target import ModelTarget

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "LayerStack",
    "ModelTarget",
    "SubBlock",
    "get_architecture",
    "register_architecture",
]
