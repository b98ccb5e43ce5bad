"""Adapter configuration classes, aliases, config strings and hashing."""

from .base import AdapterConfig
from .bottleneck import BnConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from .lora import IA3Config, LoRAConfig
from .registry import (
    ADAPTER_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    config_class_for,
    config_hash,
    parse_config_string,
    register_config_architecture,
)

__all__ = [
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTER_CONFIG",
    "AdapterConfig",
    "BnConfig",
    "DoubleSeqBnConfig",
    "IA3Config",
    "LoRAConfig",
    "ParBnConfig",
    "SeqBnConfig",
    "config_class_for",
    "config_hash",
    "parse_config_string",
    "register_config_architecture",
]
