"""adapterkit: AdapterHub's adapter API on transformers 5.

    from adapterkit import AutoAdapterModel
    model = AutoAdapterModel.from_pretrained(path)
    model.add_adapter("sst-2", config="seq_bn")
    model.add_classification_head("sst-2", num_labels=2)
    model.train_adapter("sst-2")
"""

from .composition import (
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    MultiTask,
    Parallel,
    Split,
    Stack,
    parse_composition,
)
from .configs import (
    ADAPTER_CONFIG_MAP,
    ADAPTERFUSION_CONFIG_MAP,
    DEFAULT_ADAPTER_CONFIG,
    AdapterConfig,
    AdapterFusionConfig,
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    ConfigUnion,
    DiReftConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    DvoRAConfig,
    DynamicAdapterFusionConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    MAMConfig,
    MTLLoRAConfig,
    MultiTaskConfig,
    NoReftConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    StaticAdapterFusionConfig,
    UniPELTConfig,
    VeraConfig,
)
from .context import AdapterSetup, ForwardContext
from .heads import (
    ClassificationHead,
    MultiHeadOutput,
    MultiLabelClassificationHead,
    PredictionHead,
    register_head_type,
)
from .integration import ArchitectureSpec, LayerStack, SubBlock, register_architecture
from .integration.interface import ModelInterface
from .io.interface_io import read_interface
from .methods import AdapterMethod, register_method
from .model import AutoAdapterModel, ModelAdaptersConfig, ModelAdaptersMixin, init
from .model.init import load_model

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import `AdapterTrainer` and `AdapterDropCallback` on first use (keeps ``import adapterkit`` free
    of transformers' Trainer)."""
    if name == "AdapterTrainer":
        from .training import AdapterTrainer

        return AdapterTrainer
    if name == "AdapterDropCallback":
        from .callbacks import AdapterDropCallback

        return AdapterDropCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADAPTERFUSION_CONFIG_MAP",
    "ADAPTER_CONFIG_MAP",
    "DEFAULT_ADAPTER_CONFIG",
    "AdapterCompositionBlock",
    "AdapterConfig",
    "AdapterDropCallback",
    "AdapterFusionConfig",
    "AdapterPlusConfig",
    "AdapterMethod",
    "AdapterSetup",
    "AdapterTrainer",
    "ArchitectureSpec",
    "AutoAdapterModel",
    "Average",
    "BatchSplit",
    "BnConfig",
    "ClassificationHead",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "DoRAConfig",
    "DoubleSeqBnConfig",
    "DvoRAConfig",
    "DynamicAdapterFusionConfig",
    "ForwardContext",
    "Fuse",
    "IA3Config",
    "LayerStack",
    "LoRAConfig",
    "MTLLoRAConfig",
    "ModelAdaptersConfig",
    "ModelAdaptersMixin",
    "ModelInterface",
    "MultiHeadOutput",
    "MultiLabelClassificationHead",
    "MultiTask",
    "MultiTaskConfig",
    "Parallel",
    "ParBnConfig",
    "PredictionHead",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ConfigUnion",
    "MAMConfig",
    "UniPELTConfig",
    "ReftConfig",
    "LoReftConfig",
    "NoReftConfig",
    "DiReftConfig",
    "SeqBnInvConfig",
    "DoubleSeqBnInvConfig",
    "SeqBnConfig",
    "StaticAdapterFusionConfig",
    "Split",
    "Stack",
    "SubBlock",
    "VeraConfig",
    "init",
    "load_model",
    "parse_composition",
    "read_interface",
    "register_architecture",
    "register_head_type",
    "register_method",
]
