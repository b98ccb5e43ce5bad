"""Adapter configuration classes, aliases, config strings and hashing."""

from .base import AdapterConfig
from .bottleneck import BnConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from .fusion import (
    ADAPTERFUSION_CONFIG_MAP,
    DEFAULT_ADAPTERFUSION_CONFIG,
    AdapterFusionConfig,
    DynamicAdapterFusionConfig,
    StaticAdapterFusionConfig,
)
from .lora import IA3Config, LoRAConfig
from .prefix_tuning import PrefixTuningConfig
from .registry import (
    ADAPTER_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    config_class_for,
    config_hash,
    parse_config_string,
    register_config_architecture,
)

__all__ = [
    "ADAPTERFUSION_CONFIG_MAP",
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTERFUSION_CONFIG",
    "DEFAULT_ADAPTER_CONFIG",
    "AdapterConfig",
    "AdapterFusionConfig",
    "BnConfig",
    "DoubleSeqBnConfig",
    "DynamicAdapterFusionConfig",
    "IA3Config",
    "LoRAConfig",
    "ParBnConfig",
    "PrefixTuningConfig",
    "SeqBnConfig",
    "StaticAdapterFusionConfig",
    "config_class_for",
    "config_hash",
    "parse_config_string",
    "register_config_architecture",
]
