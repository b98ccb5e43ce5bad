"""How adapters reach into transformers models: the architecture table, attach points, hooks."""

from .architectures import ARCHITECTURES, ArchitectureSpec, SubBlock, get_architecture, register_architecture
from .target import ModelTarget

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "ModelTarget",
    "SubBlock",
    "get_architecture",
    "register_architecture",
]
