"""Model classes and mixins that carry the adapter API."""

from .adapter_model import AdapterModel, AutoAdapterModel, adapter_model_class, is_adapter_model
from .adapters_config import ModelAdaptersConfig
from .heads_mixin import FlexibleHeadsMixin
from .init import init
from .mixin import ModelAdaptersMixin

__all__ = [
    "AdapterModel",
    "AutoAdapterModel",
    "FlexibleHeadsMixin",
    "ModelAdaptersConfig",
    "ModelAdaptersMixin",
    "adapter_model_class",
    "init",
    "is_adapter_model",
]
