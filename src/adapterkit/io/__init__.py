"""Reading and writing adapters and AdapterFusions in AdapterHub's folder format."""

from .adapter_io import load_adapter, load_head, save_adapter, save_head
from .files import (
    CONFIG_NAME,
    FUSION_CONFIG_NAME,
    FUSION_SAFE_WEIGHTS_NAME,
    FUSION_WEIGHTS_NAME,
    HEAD_CONFIG_NAME,
    HEAD_SAFE_WEIGHTS_NAME,
    HEAD_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
)
from .fusion_io import load_adapter_fusion, save_adapter_fusion

__all__ = [
    "CONFIG_NAME",
    "FUSION_CONFIG_NAME",
    "FUSION_SAFE_WEIGHTS_NAME",
    "FUSION_WEIGHTS_NAME",
    "HEAD_CONFIG_NAME",
    "HEAD_SAFE_WEIGHTS_NAME",
    "HEAD_WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "load_adapter",
    "load_adapter_fusion",
    "load_head",
    "save_adapter",
    "save_adapter_fusion",
    "save_head",
]
