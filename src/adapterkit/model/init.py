"""`init`: give an existing transformers model the adapter API; `load_model`: load one saved with adapters."""

from __future__ import annotations

import os
from typing import Any

from transformers import GenerationMixin, PreTrainedModel

from ..integration.architectures import ArchitectureSpec
from ..integration.interface import Interfaces, ModelInterface, as_tuple, check_paths, interface_spec
from .generation import GenerationAdaptersMixin
from .mixin import ModelAdaptersMixin

_CLASSES: dict[type, type] = {}


def init(
    model: PreTrainedModel,
    architecture: ArchitectureSpec | None = None,
    interface: Interfaces | None = None,
) -> PreTrainedModel:
    """Enable adapters on ``model`` (any class of a supported architecture, with or without a head).

    The model's class is replaced by a subclass that adds `ModelAdaptersMixin` (same class name,
    so ``save_pretrained`` still records the original architecture); weights and modules are kept.
    Calling it again does nothing.

    Args:
        model: a transformers model.
        architecture: the table entry to use (for a model type not in the table).
        interface: for a model the table does not know, a `ModelInterface` (AdapterHub's plugin interface), or
            one per layer stack (e.g. ``[encoder_interface, decoder_interface]``, or the towers of a multimodal
            model; layers are numbered in this order). It becomes the model's `ArchitectureSpec`; the model keeps
            it as ``model.adapter_interface`` and saves it as ``adapter_interface.json`` beside its adapters.

    Returns:
        The same model object.

    Raises:
        ValueError: if the model type has no architecture entry and none is given, if both ``architecture``
            and ``interface`` are given, or if the interface names modules the model does not have (each of them).
    """
    if isinstance(model, ModelAdaptersMixin):
        return model
    if interface is not None and architecture is not None:
        raise ValueError("give either architecture or interface to adapterkit.init, not both")
    cls = type(model)
    had_prefix = "base_model_prefix" in model.__dict__
    old_prefix = model.base_model_prefix
    if interface is not None:
        interfaces = as_tuple(interface)
        _use_base_model(model, interfaces[0].base_model)
        try:
            check_paths(interfaces, model.base_model)
        except ValueError:
            _restore_prefix(model, had_prefix, old_prefix)
            raise
        architecture = interface_spec(interfaces, model.config.model_type)
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
    if interface is not None:
        model.adapter_interface = interface if isinstance(interface, ModelInterface) else interfaces
    try:
        model._init_adapters(architecture)
    except Exception:
        model.__class__ = cls
        model.__dict__.pop("adapter_interface", None)
        _restore_prefix(model, had_prefix, old_prefix)
        raise
    return model


def _use_base_model(model: PreTrainedModel, attribute: str | None) -> None:
    """Point ``model.base_model`` at ``model.<attribute>`` (AdapterHub's ``base_model`` field).

    Raises:
        ValueError: if ``attribute`` is not a module attribute of the model.
    """
    if attribute is None:
        return
    if "." in attribute or not hasattr(model, attribute):
        raise ValueError(
            f"ModelInterface.base_model={attribute!r} must name a module attribute of the {type(model).__name__} "
            f"(a direct child; it becomes its base_model_prefix)"
        )
    model.base_model_prefix = attribute


def _restore_prefix(model: PreTrainedModel, had_prefix: bool, old_prefix: str) -> None:
    if had_prefix:
        model.base_model_prefix = old_prefix
    else:
        model.__dict__.pop("base_model_prefix", None)


def load_model(
    model_name_or_path: str | os.PathLike,
    model_class: type[PreTrainedModel],
    interface: Interfaces | None = None,
    *model_args: Any,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model saved with ``save_pretrained`` together with its adapters (AdapterHub's ``load_model``).

    ``model_class.from_pretrained`` builds the model; `init` runs inside its constructor, before the weights
    load, so the adapters listed in ``config.json`` are created first and their weights load with the model's.
    Without ``interface``, the ``adapter_interface.json`` saved beside the model is used if there is one and the
    architecture table has no entry for its model type; else the table.

    Args:
        model_name_or_path: a folder (or Hub id) written by ``save_pretrained``.
        model_class: the model class to load (a concrete class, or a transformers ``AutoModel...`` class).
        interface: the model's `ModelInterface` (or one per layer stack); overrides the saved one.
        *model_args, **kwargs: passed to ``from_pretrained``.

    Returns:
        The model, with adapters enabled and its saved adapters loaded.

    Raises:
        ValueError: as `init`; what ``from_pretrained`` raises.
    """
    from ..integration.architectures import ARCHITECTURES
    from ..io.interface_io import read_interface_file

    if interface is None:
        saved = read_interface_file(model_name_or_path, **kwargs)
        # AdapterHub writes its built-in interfaces too (Qwen2, Gemma2, ...): the table's entry wins for those
        if saved is not None and saved[0] not in ARCHITECTURES:
            interface = saved[1]
    if getattr(model_class, "_model_mapping", None) is not None:  # an Auto class: the concrete class of the config
        from transformers import AutoConfig

        config = kwargs.get("config") or AutoConfig.from_pretrained(model_name_or_path)
        try:
            model_class = model_class._model_mapping[type(config)]  # type: ignore[attr-defined]
        except KeyError:
            raise ValueError(
                f"{model_class.__name__} has no model class for {type(config).__name__}; pass the model class"
            ) from None
    original_init = model_class.__init__

    def __init__(self: PreTrainedModel, config: Any, *args: Any, **init_kwargs: Any) -> None:
        original_init(self, config, *args, **init_kwargs)
        init(self, interface=interface)

    loading_class = type(
        model_class.__name__,
        (model_class,),
        {"__init__": __init__, "__module__": model_class.__module__, "__qualname__": model_class.__qualname__},
    )
    return loading_class.from_pretrained(model_name_or_path, *model_args, **kwargs)
