"""Reading and writing adapters in AdapterHub's folder format."""

from .adapter_io import load_adapter, load_head, save_adapter, save_head
from .files import (
    CONFIG_NAME,
    HEAD_CONFIG_NAME,
    HEAD_SAFE_WEIGHTS_NAME,
    HEAD_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
)

__all__ = [
    "CONFIG_NAME",
    "HEAD_CONFIG_NAME",
    "HEAD_SAFE_WEIGHTS_NAME",
    "HEAD_WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "load_adapter",
    "load_head",
    "save_adapter",
    "save_head",
]
