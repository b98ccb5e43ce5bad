"""`init`: give an existing transformers model the adapter API."""

from __future__ import annotations

from transformers import GenerationMixin, PreTrainedModel

from ..integration.architectures import ArchitectureSpec
from .generation import GenerationAdaptersMixin
from .mixin import ModelAdaptersMixin

_CLASSES: dict[type, type] = {}


def init(model: PreTrainedModel, architecture: ArchitectureSpec | None = None) -> PreTrainedModel:
    """Enable adapters on ``model`` (any class of a supported architecture, with or without a head).

    The model's class is replaced by a subclass that adds `ModelAdaptersMixin` (same class name,
    so ``save_pretrained`` still records the original architecture); weights and modules are kept.
    Calling it again does nothing.

    Args:
        model: a transformers model.
        architecture: the table entry to use (for a model type not in the table).

    Returns:
        The same model object.

    Raises:
        ValueError: if the model type has no architecture entry and none is given.
    """
    if isinstance(model, ModelAdaptersMixin):
        return model
    cls = type(model)
    if cls not in _CLASSES:
        # models that generate get adapter-aware generate() (per-row routing, Parallel)
        mixins = (ModelAdaptersMixin, GenerationAdaptersMixin) if issubclass(cls, GenerationMixin) else (
            ModelAdaptersMixin,
        )
        _CLASSES[cls] = type(
            cls.__name__,
            (*mixins, cls),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    model.__class__ = _CLASSES[cls]
    try:
        model._init_adapters(architecture)
    except Exception:
        model.__class__ = cls
        raise
    return model
