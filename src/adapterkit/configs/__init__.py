"""Adapter configuration classes, aliases, config strings and hashing."""

from .base import AdapterConfig
from .bottleneck import (
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    ParBnConfig,
    SeqBnConfig,
)
from .fusion import (
    ADAPTERFUSION_CONFIG_MAP,
    DEFAULT_ADAPTERFUSION_CONFIG,
    AdapterFusionConfig,
    DynamicAdapterFusionConfig,
    StaticAdapterFusionConfig,
)
from .invertible import DoubleSeqBnInvConfig, SeqBnInvConfig
from .lora import (
    DoRAConfig,
    DvoRAConfig,
    IA3Config,
    LoRAConfig,
    MTLLoRAConfig,
    MultiTaskConfig,
    VeraConfig,
)
from .prefix_tuning import PrefixTuningConfig
from .prompt_tuning import PromptTuningConfig
from .reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig
from .registry import (
    ADAPTER_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    config_class_for,
    config_hash,
    parse_config_string,
    register_config_architecture,
)
from .union import ConfigUnion, MAMConfig, UniPELTConfig

__all__ = [
    "ADAPTERFUSION_CONFIG_MAP",
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTERFUSION_CONFIG",
    "DEFAULT_ADAPTER_CONFIG",
    "AdapterConfig",
    "AdapterFusionConfig",
    "AdapterPlusConfig",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DvoRAConfig",
    "DynamicAdapterFusionConfig",
    "IA3Config",
    "LoRAConfig",
    "MTLLoRAConfig",
    "MultiTaskConfig",
    "ParBnConfig",
    "PrefixTuningConfig",
    "ConfigUnion",
    "MAMConfig",
    "UniPELTConfig",
    "PromptTuningConfig",
    "ReftConfig",
    "LoReftConfig",
    "NoReftConfig",
    "DiReftConfig",
    "SeqBnInvConfig",
    "DoubleSeqBnInvConfig",
    "SeqBnConfig",
    "StaticAdapterFusionConfig",
    "VeraConfig",
    "config_class_for",
    "config_hash",
    "parse_config_string",
    "register_config_architecture",
]
