"""`AutoAdapterModel` and the per-architecture ``XxxAdapterModel`` classes (base model + flexible heads).

``BertAdapterModel`` and friends are made on demand from the transformers base class of a
``model_type`` (``BertModel`` -> ``BertAdapterModel``), subclassing its ``XxxPreTrainedModel`` so
weight init, ``from_pretrained`` and ``save_pretrained`` are transformers' own. The base model sits
under the usual prefix (``bert``, ``transformer``, ``model``), and heads under ``heads``, which are
AdapterHub's key names.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..composition import AdapterSetupSpec, parse_composition
from ..integration.architectures import get_architecture
from .heads_mixin import FlexibleHeadsMixin
from .mixin import ModelAdaptersMixin


class AdapterModel(FlexibleHeadsMixin, ModelAdaptersMixin):
    """Behaviour shared by every ``XxxAdapterModel``; combine with a ``XxxPreTrainedModel`` to use."""

    _base_class: type[PreTrainedModel]
    # heads return a per-batch mean loss; the Trainer must scale it for gradient accumulation itself
    accepts_loss_kwargs = False

    def __init__(self, config: PretrainedConfig, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        setattr(self, self.base_model_prefix, self._base_class(config))
        self.post_init()
        # after post_init, so transformers' weight init does not overwrite adapter initialisation
        self._init_adapters()
        self._init_heads()

    def forward(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        inputs_embeds: Any = None,
        labels: Any = None,
        start_positions: Any = None,
        end_positions: Any = None,
        head: str | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the base model with the active adapters, then the chosen head.

        Args:
            input_ids, attention_mask, **kwargs: the base model's inputs; head inputs such as
                ``labels`` or ``start_positions`` go to the head.
            head: the head to use (default: `AdapterSetup`'s head, then `active_head`).
            return_dict: return a ``ModelOutput`` (default) or a tuple.

        Returns:
            The head's output, or the base model's output when no head is chosen.
        """
        return_dict = True if return_dict is None else return_dict
        # named so the Trainer keeps these dataset columns; only the given ones reach the models
        named = {"token_type_ids": token_type_ids, "position_ids": position_ids, "inputs_embeds": inputs_embeds,
                 "labels": labels, "start_positions": start_positions, "end_positions": end_positions}
        kwargs.update({k: v for k, v in named.items() if v is not None})
        head_name = self._resolve_head(head)
        head_module = self.heads[head_name] if head_name in self.heads else None
        if head_name is not None and head_module is None:
            raise ValueError(f"no head named {head_name!r}; this model has {sorted(self.heads)}")
        head_inputs: dict[str, Any] = {}
        if head_module is not None:
            for key in head_module.get_label_names():
                if key in kwargs:
                    head_inputs[key] = kwargs.pop(key)
            inputs = head_module.prepare_inputs(
                {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
            )
        else:
            kwargs.pop("labels", None)
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        outputs = self.base_model(**inputs, return_dict=True)
        if head_module is None:
            return outputs if return_dict else outputs.to_tuple()
        return head_module(
            outputs,
            attention_mask=inputs.get("attention_mask"),
            input_ids=inputs.get("input_ids"),
            return_dict=return_dict,
            **head_inputs,
        )

    def train_adapter(self, adapter_setup: AdapterSetupSpec, train_embeddings: bool = False) -> None:
        """Train only the adapters of ``adapter_setup`` and their head (the head named like the
        setup's adapters, else the active head); everything else is frozen."""
        super().train_adapter(adapter_setup, train_embeddings=train_embeddings)
        setup = parse_composition(adapter_setup)
        self._trainable_heads(setup.flatten() if setup is not None else frozenset())


_CLASSES: dict[type[PreTrainedModel], type[PreTrainedModel]] = {}


def adapter_model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The ``XxxAdapterModel`` class for ``config.model_type`` (made once, then cached).

    Raises:
        ValueError: if the model type is not in the architecture table or has no transformers base model.
    """
    get_architecture(config.model_type)
    base_class = MODEL_MAPPING.get(type(config), None)
    if base_class is None:
        raise ValueError(f"transformers has no base model class for config {type(config).__name__}")
    if base_class not in _CLASSES:
        pretrained = next(c for c in base_class.__mro__[1:] if issubclass(c, PreTrainedModel))
        name = base_class.__name__.removesuffix("Model") + "AdapterModel"
        _CLASSES[base_class] = type(
            name, (AdapterModel, pretrained), {"_base_class": base_class, "__module__": __name__}
        )
    return _CLASSES[base_class]


class AutoAdapterModel:
    """Builds the ``XxxAdapterModel`` matching a config or checkpoint (like transformers' Auto classes)."""

    def __init__(self) -> None:
        raise OSError("use AutoAdapterModel.from_pretrained(...) or AutoAdapterModel.from_config(...)")

    @staticmethod
    def from_config(config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        """A randomly initialised adapter model for ``config``."""
        return adapter_model_class(config)(config, **kwargs)

    @staticmethod
    def from_pretrained(
        pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> PreTrainedModel:
        """Load a checkpoint (a base model, or a full adapter model saved with ``save_pretrained``).

        Adapters and heads recorded in its ``config.json`` are re-created and their weights loaded.
        Keyword arguments go to transformers' ``from_pretrained``.
        """
        config = kwargs.pop("config", None)
        if config is None:
            hub_keys = (
                "cache_dir",
                "force_download",
                "local_files_only",
                "token",
                "revision",
                "trust_remote_code",
            )
            config = AutoConfig.from_pretrained(
                pretrained_model_name_or_path, **{k: kwargs[k] for k in hub_keys if k in kwargs}
            )
        return adapter_model_class(config).from_pretrained(
            pretrained_model_name_or_path, *args, config=config, **kwargs
        )


def is_adapter_model(model: nn.Module) -> bool:
    """Whether ``model`` is an ``XxxAdapterModel`` (flexible heads)."""
    return isinstance(model, AdapterModel)
